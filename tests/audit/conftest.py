"""Audit fixtures: a signing key in tmp_path, users by role, back-dated chains."""
import contextlib
import datetime as dt
import importlib

import pytest
from django.db import connection

from keystore.keys import get_keyring
from keystore.signing import generate_signing_key, public_key_text

TRIGGERS = importlib.import_module("audit.migrations.0004_sanctioned_archive_delete")


@pytest.fixture
def signing_key(tmp_path):
    """An Ed25519 signing key installed in the keyring for one test; returns its public key text."""
    ring = get_keyring()
    saved = ring.signing_key_pem
    key = generate_signing_key(tmp_path / "audit-signing.pem")
    ring.signing_key_pem = (tmp_path / "audit-signing.pem").read_bytes()
    yield public_key_text(key.public_key())
    ring.signing_key_pem = saved


@pytest.fixture
def no_signing_key():
    ring = get_keyring()
    saved = ring.signing_key_pem
    ring.signing_key_pem = None
    yield
    ring.signing_key_pem = saved


@pytest.fixture
def people(tenants, make_user):
    """An acme compliance officer (staff, as demo_setup makes them), an acme
    searcher, a globex officer and a globex searcher."""
    officer = make_user("chris", tenants["acme"], "compliance")
    officer.is_staff = True
    officer.save()
    globex_officer = make_user("gina", tenants["globex"], "compliance")
    globex_officer.is_staff = True
    globex_officer.save()
    return {
        "officer": officer,
        "searcher": make_user("alice", tenants["acme"], "searcher"),
        "globex_officer": globex_officer,
        "globex_searcher": make_user("bob-globex", tenants["globex"], "searcher"),
    }


@pytest.fixture
def searches(tenants, people):
    """Search events in both tenants; globex's carry words that must never leak."""
    from audit.ledger.services import record_event

    made = {"acme": [], "globex": []}
    for i in range(4):
        made["acme"].append(record_event(
            action="search.completed", tenant=tenants["acme"], user=people["searcher"], query=f"acme vpn setup {i}",
            kb_id=11, kb_name="Acme IT", kb_lines=60, result_count=3, top_score=0.8, latency_ms=4.5,
            context={"client_ip": "10.1.0.1", "request_id": f"acmereq{i:04d}", "user_agent": "pytest"}))
        made["globex"].append(record_event(
            action="search.completed", tenant=tenants["globex"], user=people["globex_searcher"],
            query=f"globex-secret merger {i}", kb_id=22, kb_name="Globex Deals", kb_lines=9, result_count=1,
            top_score=0.7, latency_ms=3.0, context={"client_ip": "10.2.0.2", "request_id": f"globexreq{i:04d}"}))
    made["acme"].append(record_event(action="search.failed", outcome="failure", tenant=tenants["acme"],
                                     user=people["searcher"], query="broken", kb_id=11, kb_name="Acme IT"))
    return made


def drop_triggers():
    """What an attacker with raw database access would do first."""
    with connection.cursor() as cursor:
        for statement in TRIGGERS.STATEMENTS[connection.vendor][1]:
            cursor.execute(statement)


@contextlib.contextmanager
def audit_writes_refused():
    """The audit store refuses every insert, as a full or broken disk would;
    the refusal is lifted on exit."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("""CREATE TRIGGER refuse_audit_insert BEFORE INSERT ON audit_auditevent
                              BEGIN SELECT RAISE(ABORT, 'disk full'); END""")
        else:
            cursor.execute("""CREATE FUNCTION refuse_audit_insert() RETURNS trigger AS $$
                              BEGIN RAISE EXCEPTION 'disk full'; END; $$ LANGUAGE plpgsql""")
            cursor.execute("""CREATE TRIGGER refuse_audit_insert BEFORE INSERT ON audit_auditevent
                              FOR EACH ROW EXECUTE FUNCTION refuse_audit_insert()""")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("DROP TRIGGER refuse_audit_insert")
            else:
                cursor.execute("DROP TRIGGER refuse_audit_insert ON audit_auditevent")
                cursor.execute("DROP FUNCTION refuse_audit_insert()")


def backdated(tenant, count, *, start, step=dt.timedelta(minutes=1), **fields):
    """``count`` events of ``tenant`` from ``start`` on, a valid chain (audit.bulk)."""
    from audit.ledger.bulk import bulk_append

    rows = ({"occurred_at": start + i * step, "action": "search.completed", "username": "old-user",
             "query": f"old question {i}", **fields} for i in range(count))
    return bulk_append(tenant=tenant, events=rows)


def load_tool():
    from audit.ledger.export import standalone_verifier

    return standalone_verifier()
