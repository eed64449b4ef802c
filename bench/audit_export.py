"""How long a signed range export takes, by size: the figure behind
AUDIT_EXPORT_SYNC_MAX_EVENTS (a range over it is exported by the task worker,
not in the request). Events are a valid chain (audit.ledger.bulk) in a
throwaway SQLite database; each size is written once through the same
service the API and the worker call (audit_export_write), to a temporary
file, and timed.

    .venv/bin/python bench/audit_export.py [--sizes 10000,100000,300000] [--no-write]
"""
import argparse
import datetime as dt
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,300000")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    os.environ.update(DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development",
                      DATABASE_URL=f"sqlite:///{work / 'db.sqlite3'}", EMBED_MODEL_KEY=secrets.token_hex(32),
                      AUDIT_HMAC_KEY=secrets.token_hex(32), AUDIT_CHECKPOINT_EVERY_MINUTES="0")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from audit.ledger.bulk import bulk_append
    from audit.ledger.export import range_events
    from audit.ledger.services import audit_export_write
    from keystore.keys import get_keyring
    from keystore.signing import generate_signing_key
    from portal.models import Tenant

    generate_signing_key(work / "signing.pem")
    get_keyring().signing_key_pem = (work / "signing.pem").read_bytes()
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    have, rows = 0, []
    for size in sizes:
        bulk_append(tenant=tenant, events=({
            "occurred_at": start + dt.timedelta(seconds=i), "action": "search.completed", "username": "alice",
            "client_ip": "10.0.0.1", "query": f"how do I reset my password {i}", "kb_name": "FAQ",
            "result_count": 5, "top_score": 0.7, "latency_ms": 20.0} for i in range(have, size)))
        have = size
        end = start + dt.timedelta(seconds=size)
        with tempfile.TemporaryFile() as out:
            started = time.perf_counter()
            result = audit_export_write(out=out, tenant=tenant, user=None, context={}, kind="range",
                                        events=range_events(tenant, start, end), via="bench",
                                        description={"range": {"from": start.isoformat(), "to": end.isoformat()}})
            seconds = time.perf_counter() - started
            out.seek(0, 2)
            size_mb = out.tell() / 2**20
        rows.append((size, result.count, seconds, size_mb))
        print(rows[-1], flush=True)
    lines = ["## Audit export by size (`bench/audit_export.py`)", "",
             f"SQLite, a valid chain of search events, one signed range export a size through audit_export_write "
             f"(what the API and the task worker call); 2 cores; run {time.strftime('%Y-%m-%d')} with "
             f"`.venv/bin/python bench/audit_export.py --sizes {args.sizes}`.", "",
             "| events | seconds | events/s | bundle MB |", "|---:|---:|---:|---:|"]
    for size, count, seconds, size_mb in rows:
        lines.append(f"| {count:,} | {seconds:.1f} | {count / seconds:,.0f} | {size_mb:.1f} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section("audit_export", body)


if __name__ == "__main__":
    main()
