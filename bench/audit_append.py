"""Audit append throughput and latency: the real record_event (canonical form,
HMAC, chain lookup, insert, commit) on SQLite in WAL mode with synchronous=FULL,
beside a raw sqlite3 insert + commit of the same row as the floor, and
record_event(durable=False) (synchronous=NORMAL for that commit: what a
search's completed record costs).

Then the same appends from several threads at once, with group commit and
with each append alone (``MAX_GROUP = 1``).

    .venv/bin/python bench/audit_append.py [--events 3000] [--threads 8] [--pairs 150]
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


def service_appenders():
    """Two functions that append one event with the real record_event: durable, and not."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from audit.ledger.services import record_event
    from portal.models import Tenant

    tenant = Tenant.objects.create(slug="bench", name="Bench")
    context = {"client_ip": "10.0.0.7", "user_agent": "bench/1.0", "request_id": "0" * 32,
               "auth_method": "token", "token_id": 1}

    def appender(durable):
        def append(i):
            record_event(action="search.completed", tenant=tenant, context=context,
                         query=f"how do I reset my password {i}", kb_id=1, kb_name="IT FAQ", kb_lines=60,
                         result_count=5, top_score=0.83, latency_ms=4.2,
                         model_id="sentence-transformers/all-MiniLM-L6-v2", durable=durable)
        return append
    return appender(True), appender(False)


def raw_appender(db_path: Path):
    """The floor: a plain sqlite3 insert + commit of the same row."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("""CREATE TABLE ev (id INTEGER PRIMARY KEY, chain INT, seq INT, occurred_at TEXT, action TEXT,
        outcome TEXT, username TEXT, client_ip TEXT, user_agent TEXT, request_id TEXT, query TEXT, kb_id INT,
        kb_name TEXT, kb_lines INT, result_count INT, top_score REAL, latency_ms REAL, model_id TEXT,
        key_id TEXT, prev_hash TEXT, mac TEXT, UNIQUE(chain, seq))""")

    def append(i):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO ev VALUES (NULL,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
            1, i + 1, dt.datetime.now(dt.timezone.utc).isoformat(), "search.completed", "success", "alice",
            "10.0.0.7", "bench/1.0", "0" * 32, f"how do I reset my password {i}", 1, "IT FAQ", 60, 5, 0.83,
            4.2, "sentence-transformers/all-MiniLM-L6-v2", "k_0123456789abcdef", "0" * 64, "f" * 64))
        conn.execute("COMMIT")
    return append


def concurrent_rounds(durable, fast, *, threads: int, pairs: int, rounds: int) -> dict[str, list[tuple]]:
    """``threads`` threads each append ``pairs`` searches' records (submitted,
    durable; completed, not), at once: with group commit as shipped and with
    every append alone (MAX_GROUP = 1), the cases alternating round by round.
    Per case, per round: (events/s, CPU µs an event, mean group size)."""
    import threading

    from django.db import connections
    from audit.ledger import services
    from bench.common import cpu_seconds

    shipped, real_write = services.MAX_GROUP, services._write
    groups = [0]

    def counted_write(group, durable):
        groups[0] += 1
        return real_write(group, durable)

    services._write = counted_write
    results = {"group commit (as shipped)": [], "each append alone (MAX_GROUP = 1)": []}
    try:
        for r in range(rounds):
            for case in (list(results) if r % 2 == 0 else list(reversed(results))):
                services.MAX_GROUP = shipped if case.startswith("group") else 1
                start = threading.Barrier(threads + 1)

                def work():
                    try:
                        start.wait()
                        for i in range(pairs):
                            durable(i)
                            fast(i)
                    finally:
                        connections.close_all()

                workers = [threading.Thread(target=work) for _ in range(threads)]
                for worker in workers:
                    worker.start()
                groups[0] = 0
                start.wait()
                t0, c0 = time.perf_counter(), cpu_seconds([os.getpid()])
                for worker in workers:
                    worker.join()
                wall, cpu = time.perf_counter() - t0, cpu_seconds([os.getpid()]) - c0
                events = threads * pairs * 2
                results[case].append((events / wall, cpu * 1e6 / events, events / max(groups[0], 1)))
    finally:
        services.MAX_GROUP, services._write = shipped, real_write
    return results


def _together_reading(together: dict[str, list[tuple]]) -> str:
    grouped, alone = (together[case] for case in together)
    eps = statistics.median(g[0] / a[0] for g, a in zip(grouped, alone))
    cpu = statistics.median(g[1] / a[1] for g, a in zip(grouped, alone))
    return (f"Group commit against each append alone, the median of the rounds' ratios: {eps:.2f}× the "
            f"events/s, {cpu:.2f}× the CPU an event; {statistics.median(g[2] for g in grouped):.1f} records a "
            f"commit.")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="threads appending at once (the concurrent case)")
    parser.add_argument("--pairs", type=int, default=150, help="searches' record pairs per thread and round")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development",
        DATABASE_URL=f"sqlite:///{workdir / 'portal.sqlite3'}",
        EMBED_MODEL_KEY=secrets.token_hex(32), AUDIT_HMAC_KEY=secrets.token_hex(32),
    )
    durable, fast = service_appenders()
    appenders = {"raw": raw_appender(workdir / "raw.sqlite3"), "service": durable, "normal": fast}
    for i in range(50):  # warm-up
        for append in appenders.values():
            append(-1 - i)
    rounds = []
    for r in range(args.rounds):
        latencies = {name: [] for name in appenders}
        for i in range(args.events):
            # In rotating order, so the host's noise (its fsync above all) hits all alike.
            names = list(appenders)
            for name in names[i % 3:] + names[:i % 3]:
                t0 = time.perf_counter()
                appenders[name](r * args.events + i)
                latencies[name].append(time.perf_counter() - t0)
        rounds.append({name: (len(lat) / sum(lat), statistics.median(lat) * 1e3, percentile(lat, 0.99) * 1e3)
                       for name, lat in latencies.items()})
    together = concurrent_rounds(durable, fast, threads=args.threads, pairs=args.pairs, rounds=2 * args.rounds)
    # The round with the median record_event p50 is the result; every round is listed.
    middle = sorted(rounds, key=lambda result: result["service"][1])[len(rounds) // 2]
    eps, p50, _ = middle["service"]
    names = {"raw": "raw sqlite3 insert + commit (floor)",
             "service": "record_event (canonical JSON, HMAC, chain lookup, insert, commit)",
             "normal": "record_event(durable=False): the commit not waited on (synchronous=NORMAL)"}
    lines = [
        "## Audit append (`bench/audit_append.py`)",
        "",
        f"SQLite, WAL, synchronous=FULL, one process; {args.rounds} rounds of {args.events} events per case, the "
        f"cases in rotating order event by event (events/s = events ÷ the sum of their latencies); "
        f"run {dt.date.today().isoformat()} with `.venv/bin/python bench/audit_append.py --events {args.events} "
        f"--rounds {args.rounds}`.",
        "",
        "| round | case | events/s | p50 ms | p99 ms |",
        "|---:|---|---:|---:|---:|",
        *[f"| {n} | {names[key]} | {result[key][0]:,.0f} | {result[key][1]:.3f} | {result[key][2]:.3f} |"
          for n, result in enumerate(rounds, 1) for key in ("raw", "service", "normal")],
        "",
        f"Median round: record_event p50 {p50:.3f} ms, {eps:,.0f} events/s, "
        f"{p50 / middle['raw'][1]:.1f}× the floor's p50. Targets: p50 ≤ 0.5 ms and ≥ 2,000 events/s — "
        f"{'met' if p50 <= 0.5 and eps >= 2000 else 'NOT met'}. Not durable: p50 {middle['normal'][1]:.3f} ms "
        f"({middle['normal'][1] / p50:.2f}× the durable append's).",
        "",
        f"**Concurrent appends.** {args.threads} threads of one process each append {args.pairs} searches' "
        f"records (`search.submitted` durable, `search.completed` not) at once; the two cases alternate, "
        f"{2 * args.rounds} rounds each (CPU: the process's user + system time):",
        "",
        "| case | round | events/s | CPU µs an event | records a commit |",
        "|---|---:|---:|---:|---:|",
        *[f"| {case} | {n} | {eps:,.0f} | {cpu:.0f} | {size:.2f} |"
          for case, rows in together.items() for n, (eps, cpu, size) in enumerate(rows, 1)],
        "",
        _together_reading(together),
    ]
    text = "\n".join(lines)
    print(text)
    from bench.results import write_section

    write_section("audit_append", text)


if __name__ == "__main__":
    main()
