"""Audit append throughput and latency: the real record_event (canonical form,
HMAC, chain lookup, insert, commit) on SQLite in WAL mode with synchronous=FULL,
beside a raw sqlite3 insert + commit of the same row as the floor.

    .venv/bin/python bench/audit_append.py [--events 3000]
"""
import argparse
import datetime as dt
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_service(db_path: Path, count: int):
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from audit.services import record_event
    from portal.models import Tenant

    tenant = Tenant.objects.create(slug="bench", name="Bench")
    context = {"client_ip": "10.0.0.7", "user_agent": "bench/1.0", "request_id": "0" * 32,
               "auth_method": "token", "token_id": 1}
    for _ in range(50):  # warm-up
        record_event(action="search.completed", tenant=tenant, context=context)
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        record_event(action="search.completed", tenant=tenant, context=context, query=f"how do I reset my password {i}",
                     kb_id=1, kb_name="IT FAQ", kb_lines=60, result_count=5, top_score=0.83,
                     latency_ms=4.2, model_id="sentence-transformers/all-MiniLM-L6-v2")
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return latencies, total


def bench_raw(db_path: Path, count: int):
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("""CREATE TABLE ev (id INTEGER PRIMARY KEY, chain INT, seq INT, occurred_at TEXT, action TEXT,
        outcome TEXT, username TEXT, client_ip TEXT, user_agent TEXT, request_id TEXT, query TEXT, kb_id INT,
        kb_name TEXT, kb_lines INT, result_count INT, top_score REAL, latency_ms REAL, model_id TEXT,
        key_id TEXT, prev_hash TEXT, mac TEXT, UNIQUE(chain, seq))""")
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO ev VALUES (NULL,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
            1, i + 1, dt.datetime.now(dt.timezone.utc).isoformat(), "search.completed", "success", "alice",
            "10.0.0.7", "bench/1.0", "0" * 32, f"how do I reset my password {i}", 1, "IT FAQ", 60, 5, 0.83,
            4.2, "sentence-transformers/all-MiniLM-L6-v2", "k_0123456789abcdef", "0" * 64, "f" * 64))
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    conn.close()
    return latencies, total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="",
        DATABASE_URL=f"sqlite:///{workdir / 'portal.sqlite3'}",
        EMBED_MODEL_KEY=secrets.token_hex(32), AUDIT_HMAC_KEY=secrets.token_hex(32),
    )
    raw_lat, raw_total = bench_raw(workdir / "raw.sqlite3", args.events)
    svc_lat, svc_total = bench_service(workdir / "portal.sqlite3", args.events)
    rows = []
    for name, lat, total in (("raw sqlite3 insert + commit (floor)", raw_lat, raw_total),
                             ("record_event (canonical JSON, HMAC, chain lookup, insert, commit)", svc_lat, svc_total)):
        rows.append((name, args.events / total, statistics.median(lat) * 1e3, percentile(lat, 0.99) * 1e3))
    ratio = rows[1][2] / rows[0][2]
    lines = [
        "## Audit append (`bench/audit_append.py`)",
        "",
        f"SQLite, WAL, synchronous=FULL, one process, {args.events} events; "
        f"run {dt.date.today().isoformat()} with `.venv/bin/python bench/audit_append.py --events {args.events}`.",
        "",
        "| case | events/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {eps:,.0f} | {p50:.3f} | {p99:.3f} |" for name, eps, p50, p99 in rows],
        "",
        f"record_event p50 / floor p50 = {ratio:.1f}×. Targets: p50 ≤ 0.5 ms and ≥ 2,000 events/s — "
        f"{'met' if rows[1][2] <= 0.5 and rows[1][1] >= 2000 else 'NOT met'}.",
    ]
    text = "\n".join(lines)
    print(text)
    from bench.results import write_section

    write_section("audit_append", text)


if __name__ == "__main__":
    main()
