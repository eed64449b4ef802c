"""Signed checkpoints: periodic, signed, and the way to catch a chain cut back."""
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from audit.ledger.checkpoints import checkpoint_create, parse_checkpoint_document
from audit.ledger.models import AuditCheckpoint, AuditEvent
from audit.ledger.services import record_event
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
    import audit.ledger.checkpoints as checkpoints

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
        # The attacker also removes the stored checkpoints: only the file kept outside can tell now.
        cursor.execute("DELETE FROM audit_auditcheckpoint")
    code, out = run("audit_verify", "--tenant", "acme")
    assert code == 0, "a clean cut of the tail, checkpoints deleted too: only an outside checkpoint can tell"
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


# --- the checkpoints stored in the database, checked without --checkpoint ------

def test_a_deleted_chain_fails_against_its_stored_checkpoint(tenants, signing_key):
    for _ in range(4):
        record_event(action="search.completed", tenant=tenants["acme"])
    for _ in range(2):
        record_event(action="auth.login", tenant=tenants["globex"])
    assert run("audit_checkpoint")[0] == 0  # one stored checkpoint per chain, as the cron job writes them
    code, out = run("audit_verify")
    assert code == 0, out
    globex = tenants["globex"].pk
    assert f"chain {globex}: matches its latest stored checkpoint, seq 2" in out
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s", [globex])
    for args in ((), ("--tenant", "globex")):
        code, out = run("audit_verify", *args)
        assert code == 1, out
        assert (f"chain {globex}: CUT BACK after its stored checkpoint: it was signed at seq 2" in out
                and "every event of the chain is gone" in out), out
        assert "audit log intact" not in out


def test_a_tail_cut_after_a_stored_checkpoint_fails_without_a_checkpoint_file(tenants, signing_key, settings):
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 5
    settings.AUDIT_CHECKPOINT_EVERY_MINUTES = 0
    for _ in range(7):
        record_event(action="search.completed", tenant=tenants["acme"])
    assert run("audit_verify")[0] == 0
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s AND seq > 4", [tenants["acme"].pk])
    code, out = run("audit_verify")
    assert code == 1, out
    acme = tenants["acme"].pk
    assert f"chain {acme}: intact, 4 events" in out, "the rest of the chain is still consistent"
    assert f"chain {acme}: CUT BACK after its stored checkpoint: it was signed at seq 5" in out
    assert "the chain now ends at seq 4" in out


@pytest.mark.parametrize("activity", ["token", "knowledge base"])
def test_a_tenant_with_activity_but_no_events_is_reported(tenants, make_user, make_token, activity):
    """No checkpoint at all (no signing key, or none written yet): the tenant's
    own rows still say that it had a chain."""
    from portal.scope import Scope
    from search.services import kb_create

    user = make_user("alice", tenants["acme"], "admin")
    if activity == "token":
        make_token(user, tenants["acme"])
    else:
        kb_create(scope=Scope(tenant=tenants["acme"], user=user), name="FAQ")
    record_event(action="auth.login", tenant=tenants["globex"])
    assert not AuditCheckpoint.objects.exists()
    assert run("audit_verify")[0] == 0
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE chain = %s", [tenants["acme"].pk])
    code, out = run("audit_verify")
    assert code == 1, out
    assert f"chain {tenants['acme'].pk} (acme): NO EVENTS, but the tenant has 1 " in out
    assert activity in out and "its chain was deleted" in out
    assert run("audit_verify", "--tenant", "globex")[0] == 0, "other chains still verify"


def test_a_tenant_that_never_did_anything_is_not_reported(tenants):
    record_event(action="auth.login", tenant=tenants["globex"])
    code, out = run("audit_verify")
    assert code == 0, out
    assert "acme" not in out and f"chain {tenants['acme'].pk}" not in out


def _forge_row(chain, seq, head_hash, *, signer, key_id=None):
    from keystore.signing import sign, signing_key_id

    payload = json.dumps({"chain": chain, "format": "portal-audit-checkpoint-v1", "head_hash": head_hash,
                          "seq": seq, "tenant": "acme", "tenant_id": chain, "time": "2026-01-01T00:00:00.000Z"},
                         sort_keys=True, separators=(",", ":"))
    return AuditCheckpoint.objects.create(
        chain=chain, seq=seq, head_hash=head_hash, created_at="2026-01-01T00:00:00Z", payload=payload,
        signature=sign(signer, payload.encode()), signing_key_id=key_id or signing_key_id(signer.public_key()))


def test_a_forged_checkpoint_row_is_reported_and_not_trusted(tenants, signing_key):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.ledger.checkpoints import signing_key as own_key
    from keystore.signing import signing_key_id

    acme = tenants["acme"].pk
    events = [record_event(action="search.completed", tenant=tenants["acme"]) for _ in range(3)]
    checkpoint_create(chain=acme, tenant=tenants["acme"])
    assert run("audit_verify")[0] == 0
    # A row that claims this portal's key id but carries another key's signature,
    # claiming a head far beyond the chain: it must not be believed ("cut back").
    attacker = Ed25519PrivateKey.generate()
    forged = _forge_row(acme, 99, "e" * 64, signer=attacker, key_id=signing_key_id(own_key().public_key()))
    code, out = run("audit_verify")
    assert code == 1, out
    assert f"chain {acme}: stored checkpoint id {forged.pk} (seq 99): signature does NOT verify" in out
    assert "NOT trusted" in out and "CUT BACK" not in out
    assert f"chain {acme}: intact, 3 events" in out and events[-1].seq == 3


def test_a_checkpoint_row_of_an_unknown_key_is_reported(tenants, signing_key):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    acme = tenants["acme"].pk
    event = record_event(action="search.completed", tenant=tenants["acme"])
    stranger = Ed25519PrivateKey.generate()
    _forge_row(acme, 1, event.mac, signer=stranger)
    code, out = run("audit_verify")
    assert code == 1 and "not by a key held here" in out and "NOT trusted" in out, out


def test_stored_checkpoints_of_a_key_held_elsewhere_are_checked_with_public_key(tenants, signing_key):
    """The portal that verifies may not hold the private key: the public key is enough."""
    from keystore.keys import get_keyring

    for _ in range(2):
        record_event(action="search.completed", tenant=tenants["acme"])
    checkpoint_create(chain=tenants["acme"].pk, tenant=tenants["acme"])
    ring = get_keyring()
    saved, ring.signing_key_pem = ring.signing_key_pem, None
    try:
        code, out = run("audit_verify")
        assert code == 1 and "not by a key held here (none: AUDIT_SIGNING_KEY_FILE is not set)" in out, out
        code, out = run("audit_verify", "--public-key", signing_key)
        assert code == 0 and "matches its latest stored checkpoint, seq 2" in out, out
    finally:
        ring.signing_key_pem = saved


def test_archiving_a_whole_chain_continues_its_numbering(tenants, signing_key, settings, tmp_path):
    """The archive's export signs a checkpoint at the archived head; the
    `audit.archive` record must follow it (seq + 1, linked), not restart the
    emptied chain at seq 1, or the stored checkpoint rightly says cut back."""
    import datetime as dt

    from tests.audit.conftest import backdated

    settings.AUDIT_RETENTION_DAYS = 365
    backdated(tenants["acme"], 10, start=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    last = AuditEvent.objects.get(chain=tenants["acme"].pk, seq=10)
    code, out = run("audit_archive", "--out-dir", str(tmp_path))
    assert code == 0 and "archived seq 1..10" in out, out
    record = AuditEvent.objects.get(chain=tenants["acme"].pk, action="audit.archive")
    assert (record.seq, record.prev_hash) == (11, last.mac)
    code, out = run("audit_verify")
    assert code == 0, out
    assert "seq 1..10 archived" in out and "matches its latest stored checkpoint, seq 10" in out
