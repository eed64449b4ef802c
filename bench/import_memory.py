"""Memory of an import on PostgreSQL: how much a process grows while it
imports 10,000 and 100,000 lines, the portal's way (a batch embedded and
written with COPY at a time, in one transaction) beside the way it imports on
SQLite (every vector embedded first, then written), in one run.

Each case runs in a fresh process against one throwaway PostgreSQL 18 +
pgvector (pgserver), with a sealed random Qwen3 model of 512 dimensions (one
layer, so the model's time does not swamp the run; what is measured is what
the import holds). The file is read and parsed before the first measurement;
the growth is the peak resident memory during the import (VmHWM) minus the
resident memory just before it.

    .venv/bin/python bench/import_memory.py [--sizes 10000,100000] [--dims 512] [--no-write]
"""
import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.import_while_searching import WORDS, lines  # noqa: E402


def memory(field: str) -> float:
    """VmRSS or VmHWM of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def reset_peak() -> None:
    """Start VmHWM again from the current resident size (Linux ≥ 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def case(args) -> dict:
    """One import in this process: {'lines', 'way', 'growth_mb', 'seconds', 'added'}."""
    os.environ.update(DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development",
                      DATABASE_URL=args.url, EMBED_MODEL_KEY=args.key, AUDIT_HMAC_KEY=secrets.token_hex(32))
    import django

    django.setup()
    import torch
    from django.db import transaction

    from portal.models import Tenant
    from portal.scope import Scope
    from search import services
    from search.engine import Engine, set_engine
    from search.models import KnowledgeBase
    from search.parsing import parse_entries

    torch.set_num_threads(2)
    engine = Engine.open(Path(args.bundle), bytes.fromhex(args.key), device="cpu")
    set_engine(engine)
    tenant, _ = Tenant.objects.get_or_create(slug="bench", defaults={"name": "bench"})
    kb = KnowledgeBase.objects.create(tenant=tenant, name=f"{args.way} {args.lines} {time.time_ns()}")
    scope = Scope(tenant=tenant, user=None)
    entries = parse_entries(lines(args.lines), "txt", max_entries=10**6, max_chars=10**5)
    engine.embed(["warm up the model"], kind="document")
    before = memory("VmRSS")
    reset_peak()
    started = time.perf_counter()
    if args.way == "batches":
        added = services.documents_import(scope=scope, kb=kb, entries=entries, source="bench").added
    else:  # what documents_import does on SQLite, here on PostgreSQL
        fresh = [(entry, services.text_digest(entry.text)) for entry in entries]
        todo, _, matrix, _ = services._embed_new(kb, engine, fresh, None)
        with transaction.atomic():
            added, _ = services._store_embedded(kb, engine, todo, matrix, "bench")
            services._record_import(scope, kb, engine, "bench", added, 0, 0)  # the index, the record
    seconds = time.perf_counter() - started
    return {"lines": args.lines, "way": args.way, "growth_mb": memory("VmHWM") - before, "seconds": seconds,
            "added": added, "rss_before_mb": before}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--way", help=argparse.SUPPRESS)
    parser.add_argument("--lines", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return

    from bench.vector_search import setup_django, start_postgres
    from search.sealing import seal_folder
    from tests.search.conftest import build_tiny_qwen3

    server, url = start_postgres(1024)
    setup_django(url)  # migrates
    work = Path(tempfile.mkdtemp(prefix="bench-import-memory-"))
    key = secrets.token_bytes(32)
    vocab = sorted({w.lower() for w in WORDS} | set("note the rules for requests changed ask team ref".split()))
    model = build_tiny_qwen3(work / "model", hidden_size=args.dims, layers=1, words=vocab)
    bundle = work / "model.q3e.enc"
    seal_folder(model, bundle, key, model_id=f"bench/random-qwen3-{args.dims}")

    results = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:  # interleaved: each size, both ways, one after the other
        for way in ("batches", "at-once"):
            done = subprocess.run([sys.executable, __file__, "--case", "--way", way, "--lines", str(size),
                                   "--url", url, "--key", key.hex(), "--bundle", str(bundle)],
                                  capture_output=True, text=True, cwd=ROOT, timeout=3600)
            if done.returncode:
                sys.exit(f"case {way} {size} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)

    from django.conf import settings

    body = "\n".join([
        "## Memory of an import (`bench/import_memory.py`)",
        "",
        f"PostgreSQL 18 + pgvector (pgserver); a sealed random one-layer Qwen3 model of {args.dims} dimensions "
        "(the vectors are what grows; a real model's forward pass only takes longer); each case in a fresh "
        f"process; KB_IMPORT_STORE_BATCH {settings.KB_IMPORT_STORE_BATCH}, KB_IMPORT_BATCH "
        f"{settings.KB_IMPORT_BATCH}; run {time.strftime('%Y-%m-%d')} with "
        f"`.venv/bin/python bench/import_memory.py --sizes {args.sizes} --dims {args.dims}`. Growth is the peak "
        "resident memory during the import minus the resident memory just before it (the file already read "
        "and parsed); the vectors alone are lines × dimensions × 4 bytes.",
        "",
        "| lines | way | growth MB | vectors MB | seconds | entries added |",
        "|---:|---|---:|---:|---:|---:|",
        *[f"| {r['lines']:,} | {'a batch at a time (PostgreSQL)' if r['way'] == 'batches' else 'all embedded first (SQLite way)'} "
          f"| {r['growth_mb']:.1f} | {r['lines'] * args.dims * 4 / 2**20:.0f} | {r['seconds']:.1f} | {r['added']:,} |"
          for r in results],
    ])
    by = {(r["lines"], r["way"]): r["growth_mb"] for r in results}
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        body += ("\n\n" f"- a batch at a time: {big:,} lines grew the process by {by[(big, 'batches')]:.1f} MB, "
                 f"{small:,} lines by {by[(small, 'batches')]:.1f} MB "
                 f"(difference {by[(big, 'batches')] - by[(small, 'batches')]:+.1f} MB)\n"
                 f"- all embedded first: {by[(big, 'at-once')]:.1f} MB and {by[(small, 'at-once')]:.1f} MB "
                 f"(difference {by[(big, 'at-once')] - by[(small, 'at-once')]:+.1f} MB)")
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section("import_memory", body)


if __name__ == "__main__":
    main()
