"""Signed checkpoints: periodic, signed, and the way to catch a chain cut back."""
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from audit.checkpoints import checkpoint_create, parse_checkpoint_document
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import record_event
from tests.audit.conftest import drop_triggers


def run(command, *args):
    from io import StringIO

    out = StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=StringIO())
        return 0, out.getvalue()
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)


def test_record_event_writes_a_signed_checkpoint_every_n_events(tenants, signing_key, settings):
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 5
    settings.AUDIT_CHECKPOINT_EVERY_MINUTES = 0
    events = [record_event(action="auth.login", tenant=tenants["acme"]) for _ in range(12)]
    checkpoints = list(AuditCheckpoint.objects.filter(chain=tenants["acme"].pk).order_by("seq"))
    assert [c.seq for c in checkpoints] == [5, 10]
    assert checkpoints[1].head_hash == events[9].mac
    payload = json.loads(checkpoints[1].payload)
    assert payload["tenant"] == "acme" and payload["seq"] == 10 and payload["head_hash"] == events[9].mac
    parse_checkpoint_document({"checkpoint": checkpoints[1].payload, "signature": checkpoints[1].signature})


def test_record_event_writes_a_checkpoint_when_minutes_have_passed(tenants, signing_key, settings, monkeypatch):
    import audit.checkpoints as checkpoints

    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 0
    settings.AUDIT_CHECKPOINT_EVERY_MINUTES = 10
    record_event(action="auth.login", tenant=tenants["acme"])
    assert not AuditCheckpoint.objects.exists()
    checkpoints._last_written[tenants["acme"].pk] -= 601  # this worker wrote its last one 10 minutes ago
    event = record_event(action="auth.login", tenant=tenants["acme"])
    assert AuditCheckpoint.objects.get().head_hash == event.mac
    record_event(action="auth.login", tenant=tenants["acme"])
    assert AuditCheckpoint.objects.count() == 1


def test_appends_go_on_without_a_signing_key(tenants, no_signing_key, settings):
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 1
    record_event(action="auth.login", tenant=tenants["acme"])
    assert AuditEvent.objects.count() == 1 and not AuditCheckpoint.objects.exists()


def test_checkpoint_command_without_a_key_names_the_variable(tenants, no_signing_key):
    code, out = run("audit_checkpoint", "--tenant", "acme")
    assert code == 1 and "AUDIT_SIGNING_KEY_FILE" in out


def test_checkpoint_file_detects_a_chain_cut_back(tenants, signing_key, tmp_path):
    events = [record_event(action="search.completed", tenant=tenants["acme"]) for _ in range(6)]
    held = tmp_path / "acme-checkpoint.json"
    assert run("audit_checkpoint", "--tenant", "acme", "--out", str(held))[0] == 0
    assert run("audit_verify", "--checkpoint", str(held))[0] == 0
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s AND seq > 3", [tenants["acme"].pk])
    code, out = run("audit_verify", "--tenant", "acme")
    assert code == 0, "a clean cut of the tail leaves a valid chain: only the checkpoint can tell"
    code, out = run("audit_verify", "--tenant", "acme", "--checkpoint", str(held))
    assert code == 1
    assert f"CUT BACK after the checkpoint: it was signed at seq {events[-1].seq}" in out
    assert "the chain now ends at seq 3" in out


def test_checkpoint_file_detects_a_rewritten_head(tenants, signing_key, tmp_path):
    for _ in range(3):
        record_event(action="search.completed", tenant=tenants["acme"])
    held = tmp_path / "cp.json"
    run("audit_checkpoint", "--tenant", "acme", "--out", str(held))
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET mac = %s WHERE chain = %s AND seq = 3",
                       ["f" * 64, tenants["acme"].pk])
    code, out = run("audit_verify", "--tenant", "acme", "--checkpoint", str(held))
    assert code == 1 and "not the one the checkpoint signed" in out


def test_a_forged_checkpoint_file_is_refused(tenants, signing_key, tmp_path):
    record_event(action="search.completed", tenant=tenants["acme"])
    held = tmp_path / "cp.json"
    run("audit_checkpoint", "--tenant", "acme", "--out", str(held))
    document = json.loads(held.read_text())
    document["checkpoint"] = document["checkpoint"].replace('"seq":1', '"seq":0')
    held.write_text(json.dumps(document))
    code, out = run("audit_verify", "--checkpoint", str(held))
    assert code == 1 and "signature does not verify" in out


def test_checkpoints_are_append_only(tenants, signing_key):
    from django.db import DatabaseError, transaction

    record_event(action="search.completed", tenant=tenants["acme"])
    checkpoint = checkpoint_create(chain=tenants["acme"].pk, tenant=tenants["acme"])
    for statement in ("UPDATE audit_auditcheckpoint SET seq = 99 WHERE id = %s",
                      "DELETE FROM audit_auditcheckpoint WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement, [checkpoint.pk])
