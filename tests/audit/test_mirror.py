"""The SIEM mirror: one JSON line per committed event, 0600, fsync'd; a failure
is logged and shown to staff on /readyz while the database keeps the event.

Tests run inside a transaction, so `committed` runs the on-commit hooks the
way a real commit does."""
import json
import logging
import os
import stat

import pytest
from django.db import transaction

from audit import mirror
from audit.models import AuditEvent
from audit.services import record_event


@pytest.fixture(autouse=True)
def fresh_status(monkeypatch):
    monkeypatch.setattr(mirror, "status", mirror.MirrorStatus())


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    return lambda: django_capture_on_commit_callbacks(execute=True)


def test_each_event_is_appended_with_its_mac(tenants, settings, tmp_path, committed):
    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    with committed():
        events = [record_event(action="search.completed", tenant=tenants["acme"], query=f"q{i}") for i in range(3)]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["mac"] for line in lines] == [e.mac for e in events]
    assert lines[0]["query"] == "q0" and lines[0]["tenant_id"] == tenants["acme"].pk
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_mirror_lines_match_the_export_form(tenants, settings, tmp_path, committed):
    from audit.export import event_line
    from audit.models import MAC_FIELDS

    settings.AUDIT_JSONL_PATH = str(tmp_path / "audit.jsonl")
    with committed():
        record_event(action="search.completed", tenant=tenants["acme"], query="same bytes", top_score=0.5)
    row = AuditEvent.objects.values("mac", *MAC_FIELDS).get()
    assert (tmp_path / "audit.jsonl").read_bytes() == event_line(row)


def test_a_rolled_back_event_is_not_mirrored(tenants, settings, tmp_path, committed):
    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    with committed(), pytest.raises(RuntimeError):
        with transaction.atomic():
            record_event(action="token.create", tenant=tenants["acme"])
            raise RuntimeError("the action failed after its event")
    assert not path.exists() or path.read_text() == ""


def test_a_mirror_failure_is_logged_and_the_event_kept(tenants, settings, tmp_path, caplog, committed):
    settings.AUDIT_JSONL_PATH = str(tmp_path / "missing-dir" / "audit.jsonl")
    with caplog.at_level(logging.ERROR, logger="audit.mirror"), committed():
        event = record_event(action="search.completed", tenant=tenants["acme"])
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert "could not append chain" in caplog.text and "FileNotFoundError" in caplog.text
    ok, detail = mirror.mirror_check()
    assert ok and detail.startswith("DEGRADED") and f"seq {event.seq}" in detail


def test_readyz_shows_the_mirror_failure_to_staff_only(tenants, settings, tmp_path, client, make_user, committed):
    settings.AUDIT_JSONL_PATH = str(tmp_path / "missing-dir" / "audit.jsonl")
    with committed():
        record_event(action="search.completed", tenant=tenants["acme"])
    anonymous = client.get("/readyz").json()
    assert "checks" not in anonymous
    staff = make_user("ops", tenants["acme"], "admin")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    checks = client.get("/readyz").json()["checks"]
    assert checks["audit_mirror"]["detail"].startswith("DEGRADED")
