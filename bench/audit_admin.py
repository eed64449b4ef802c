"""Audit review in the admin at a million events: the change list (unfiltered),
a filtered change list (user + date range) and a detail page, rendered through
Django's test client as a logged-in compliance officer; p50 over N runs.

The events are a valid chain (MACs computed in Python, audit.bulk), generated
once into bench/out/audit-admin-<N>.sqlite3 with the key beside it, and reused.

    .venv/bin/python bench/audit_admin.py [--events 1000000] [--runs 7]
"""
import argparse
import datetime as dt
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
USERS = 40
KBS = 5
OTHER_TENANT_EVENTS = 20_000


def setup_environment(events: int) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / f"audit-admin-{events}.sqlite3"
    key_file = OUT / f"audit-admin-{events}.key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(32))
        db.unlink(missing_ok=True)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development", DATABASE_URL=f"sqlite:///{db}",
        EMBED_MODEL_KEY=secrets.token_hex(32), AUDIT_HMAC_KEY=key_file.read_text().strip(),
        AUDIT_CHECKPOINT_EVERY_MINUTES="0",
    )
    return db


def generate(events: int):
    from django.contrib.auth import get_user_model
    from django.db import connection

    from audit.bulk import bulk_append
    from audit.models import AuditEvent
    from portal.models import Membership, Tenant

    acme, _ = Tenant.objects.get_or_create(slug="acme", defaults={"name": "Acme"})
    globex, _ = Tenant.objects.get_or_create(slug="globex", defaults={"name": "Globex"})
    User = get_user_model()
    officer = User.objects.filter(username="chris").first()
    if officer is None:
        officer = User.objects.create_user("chris", password=secrets.token_urlsafe(12), is_staff=True)
        Membership.objects.create(user=officer, tenant=acme, role="compliance")
    searchers = []
    for i in range(USERS):
        user = User.objects.filter(username=f"user{i:02d}").first() or User.objects.create_user(f"user{i:02d}")
        Membership.objects.get_or_create(user=user, tenant=acme, role="searcher")
        searchers.append(user)
    have = AuditEvent.objects.filter(chain=acme.pk).count()
    if have >= events:
        return acme, officer, searchers
    print(f"generating {events - have:,} events (one time; cached in {OUT})…", flush=True)
    end = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    start = end - dt.timedelta(days=365)
    step = (end - start) / events
    actions = ["search.submitted", "search.completed", "search.completed", "search.failed", "auth.login"]

    def rows(first, count):
        for i in range(first, first + count):
            user = searchers[i % USERS]
            action = actions[i % len(actions)]
            search = action.startswith("search.")
            yield {
                "occurred_at": start + step * i, "action": action,
                "outcome": "failure" if action == "search.failed" else "success",
                "user_id": user.pk, "username": user.username, "auth_method": "session",
                "client_ip": f"10.0.{i % 250}.{i % 200 + 1}", "user_agent": "Mozilla/5.0 bench",
                "request_id": f"{i:032x}",
                "query": f"how do I configure the VPN client on laptop model {i % 997}" if search else "",
                "kb_id": (i % KBS) + 1 if search else None, "kb_name": f"KB {(i % KBS) + 1}" if search else "",
                "kb_lines": 1200 if search else None, "result_count": 5 if action == "search.completed" else None,
                "top_score": 0.5 + (i % 50) / 100 if action == "search.completed" else None,
                "latency_ms": 4.0 + (i % 30) / 10 if action == "search.completed" else None,
                "model_id": "all-MiniLM-L6-v2" if search else "",
            }

    t0 = time.perf_counter()
    done = have
    while done < events:
        count = min(100_000, events - done)
        bulk_append(tenant=acme, events=rows(done, count), batch_size=50_000)
        done += count
        print(f"  {done:,} events ({time.perf_counter() - t0:.0f} s)", flush=True)
    bulk_append(tenant=globex, events=({"occurred_at": start + step * i * 50, "action": "search.completed",
                                        "username": "bob", "query": "globex merger"}
                                       for i in range(OTHER_TENANT_EVENTS)))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return acme, officer, searchers


def timed(client, url, runs):
    client.get(url)  # warm-up: templates, caches
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - t0) * 1e3)
        assert response.status_code == 200, (url, response.status_code)
    return samples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--verify", action="store_true", help="also walk the whole chain (takes a while)")
    args = parser.parse_args()
    db = setup_environment(args.events)

    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from audit.models import AuditEvent
    from audit.verify import verify_chain

    call_command("migrate", verbosity=0)
    acme, officer, searchers = generate(args.events)
    total = AuditEvent.objects.filter(chain=acme.pk).count()
    if args.verify:
        t0 = time.perf_counter()
        report = verify_chain(acme.pk)
        print(report.describe(), f"({time.perf_counter() - t0:.0f} s)")
        assert report.ok

    client = Client()
    client.force_login(officer)
    middle = AuditEvent.objects.filter(chain=acme.pk, seq=total // 2).values_list("pk", "occurred_at").get()
    day = middle[1].date()
    cases = [
        ("change list, unfiltered", "/admin/audit/auditevent/"),
        ("change list, user + 30-day range", f"/admin/audit/auditevent/?user={searchers[7].pk}"
                                             f"&occurred_from={day - dt.timedelta(days=30)}&occurred_to={day}"),
        ("detail page (HMAC + link check)", f"/admin/audit/auditevent/{middle[0]}/change/"),
    ]
    rows = []
    for name, url in cases:
        samples = timed(client, url, args.runs)
        rows.append((name, statistics.median(samples), max(samples)))
        print(f"{name}: p50 {rows[-1][1]:.1f} ms, max {rows[-1][2]:.1f} ms", flush=True)

    met = all(p50 < 500 for _, p50, _ in rows)
    lines = [
        "## Audit review in the admin (`bench/audit_admin.py`)",
        "",
        f"SQLite (WAL) file of {total:,} acme events (a valid chain, 365 days, {USERS} users) plus "
        f"{OTHER_TENANT_EVENTS:,} of another tenant; Django test client logged in as the compliance officer, "
        f"each page rendered {args.runs} times after a warm-up; every view also appends its `audit.view` event. "
        f"Run {dt.date.today().isoformat()} with `.venv/bin/python bench/audit_admin.py --events {args.events}`.",
        "",
        "| page | p50 ms | max ms |",
        "|---|---:|---:|",
        *[f"| {name} | {p50:.1f} | {worst:.1f} |" for name, p50, worst in rows],
        "",
        f"Target: p50 under 500 ms each — {'met' if met else 'NOT met'}.",
    ]
    text = "\n".join(lines)
    print(text)
    from bench.results import write_section

    write_section("audit_admin", text)
    print(f"(database: {db})")


if __name__ == "__main__":
    main()
