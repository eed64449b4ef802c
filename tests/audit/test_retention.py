"""Retention: old events leave through the one sanctioned path, into a signed
archive, and the chain still verifies from the archive record on."""
import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from audit.ledger.models import ArchiveAuthorisation, AuditEvent
from audit.ledger.services import record_event
from audit.ledger.verify import verify_chain
from tests.audit.conftest import backdated, drop_triggers, load_tool

OLD = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def run(command, *args):
    out = StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=StringIO())
        return 0, out.getvalue()
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)


@pytest.fixture
def aged_chain(tenants, settings):
    """30 events from 2020, then 3 from now, in acme's chain."""
    settings.AUDIT_RETENTION_DAYS = 365
    backdated(tenants["acme"], 30, start=OLD)
    recent = [record_event(action="search.completed", tenant=tenants["acme"], query=f"recent {i}") for i in range(3)]
    return recent


def test_archive_removes_old_events_and_the_chain_still_verifies(aged_chain, tenants, signing_key, tmp_path):
    acme = tenants["acme"].pk
    code, out = run("audit_archive", "--out-dir", str(tmp_path))
    assert code == 0, out
    assert "archived seq 1..30 (30 events)" in out
    assert not AuditEvent.objects.filter(chain=acme, occurred_at__lt=OLD + dt.timedelta(days=1)).exists()
    assert AuditEvent.objects.filter(chain=acme).order_by("seq").first().seq == 31
    archive_event = AuditEvent.objects.get(chain=acme, action="audit.archive")
    assert archive_event.detail["through_seq"] == 30 and archive_event.detail["count"] == 30
    report = verify_chain(acme)
    assert report.ok and "archived" in report.describe()
    assert run("audit_verify")[0] == 0
    assert not ArchiveAuthorisation.objects.exists()


def test_the_archive_verifies_and_holds_the_removed_events(aged_chain, tenants, signing_key, tmp_path):
    import hashlib

    run("audit_archive", "--out-dir", str(tmp_path))
    archive, = tmp_path.glob("audit-archive-acme-seq1-30-*.zip")
    event = AuditEvent.objects.get(action="audit.archive")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == event.detail["archive_sha256"]
    result = load_tool().verify_bundle(archive.read_bytes(), require_complete=True)
    assert result.ok, result.problems
    assert result.manifest["kind"] == "archive" and [e["seq"] for e in result.events] == list(range(1, 31))
    assert result.events[-1]["mac"] == event.detail["through_hash"]


def test_ad_hoc_delete_is_still_refused_after_an_archive(aged_chain, tenants, signing_key, tmp_path):
    run("audit_archive", "--out-dir", str(tmp_path))
    for statement in ("DELETE FROM audit_auditevent WHERE chain = %s",
                      "DELETE FROM audit_auditevent WHERE chain = %s AND seq = 31"):
        with pytest.raises(DatabaseError, match="append-only"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement, [tenants["acme"].pk])


def test_the_trigger_allows_only_rows_an_authorisation_covers(aged_chain, tenants):
    acme = tenants["acme"].pk
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic():
            ArchiveAuthorisation.objects.create(chain=acme, through_seq=5, created_at=OLD)
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s AND seq <= 6", [acme])
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic():
            ArchiveAuthorisation.objects.create(chain=tenants["globex"].pk, through_seq=50, created_at=OLD)
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s AND seq = 1", [acme])
    assert AuditEvent.objects.filter(chain=acme).count() == 33


def test_a_second_archive_continues_from_the_first(tenants, settings, signing_key, tmp_path):
    settings.AUDIT_RETENTION_DAYS = 365
    backdated(tenants["acme"], 10, start=OLD)
    run("audit_archive", "--out-dir", str(tmp_path))
    backdated(tenants["acme"], 5, start=OLD + dt.timedelta(days=30))  # an import of old events, say
    record_event(action="auth.login", tenant=tenants["acme"])
    # The first archive event (seq 11) is itself old only once time passes; here only the imported ones are.
    code, out = run("audit_archive", "--out-dir", str(tmp_path))
    assert code == 0, out
    assert run("audit_verify")[0] == 0


def test_deleting_the_oldest_events_without_an_archive_is_detected(aged_chain, tenants):
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s AND seq <= 10", [tenants["acme"].pk])
    code, out = run("audit_verify")
    assert code == 1 and "events 1..10 are missing" in out


def test_a_forged_archive_record_does_not_pass(aged_chain, tenants, signing_key):
    """Deleting a prefix and appending a fake audit.archive needs the audit key: without it the MAC fails."""
    from audit.ledger.canonical import compute_mac
    from audit.ledger.models import MAC_FIELDS

    acme = tenants["acme"].pk
    drop_triggers()
    mac_at_10 = AuditEvent.objects.get(chain=acme, seq=10).mac
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s AND seq <= 10", [acme])
    head = AuditEvent.objects.filter(chain=acme).order_by("-seq").first()
    forged = {name: getattr(head, name) for name in MAC_FIELDS}
    forged.update(seq=head.seq + 1, prev_hash=head.mac, action="audit.archive",
                  detail={"through_seq": 10, "through_hash": mac_at_10})
    AuditEvent.objects.create(**forged, mac=compute_mac(b"\x02" * 32, forged))
    code, out = run("audit_verify")
    assert code == 1 and "MAC does not match" in out


def test_nothing_to_archive_and_dry_run_change_nothing(aged_chain, tenants, signing_key, tmp_path):
    code, out = run("audit_archive", "--dry-run", "--out-dir", str(tmp_path / "archives"))
    assert "would archive seq 1..30" in out and AuditEvent.objects.count() == 33
    assert not (tmp_path / "archives").exists()
    assert "nothing older than the retention" in run("audit_archive", "--tenant", "globex")[1]


def test_archive_without_a_signing_key_names_the_variable(aged_chain, no_signing_key, tmp_path):
    code, out = run("audit_archive", "--out-dir", str(tmp_path))
    assert code == 1 and "AUDIT_SIGNING_KEY_FILE" in out and AuditEvent.objects.count() == 33


def test_archive_refuses_a_chain_that_does_not_verify(aged_chain, tenants, signing_key, tmp_path):
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET query = 'changed' WHERE chain = %s AND seq = 4",
                       [tenants["acme"].pk])
    with connection.cursor() as cursor:
        for statement in __import__("tests.audit.conftest", fromlist=["TRIGGERS"]).TRIGGERS.STATEMENTS[
                connection.vendor][0]:
            cursor.execute(statement)
    code, out = run("audit_archive", "--out-dir", str(tmp_path))
    assert code == 1 and "does not verify" in out and AuditEvent.objects.count() == 33


@pytest.mark.postgresql_only
def test_postgres_refuses_to_commit_a_left_over_authorisation(aged_chain, tenants):
    with pytest.raises(DatabaseError, match="must be removed"):
        with transaction.atomic():
            ArchiveAuthorisation.objects.create(chain=tenants["acme"].pk, through_seq=1, created_at=OLD)
            connection.cursor().execute("SET CONSTRAINTS ALL IMMEDIATE")
