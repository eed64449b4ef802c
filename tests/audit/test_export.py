"""Export bundles: signed, verifiable offline by the standalone tool, tamper and gaps named."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from audit.ledger.models import AuditEvent
from tests.audit.conftest import drop_triggers, load_tool

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "verify_audit_export.py"


def run(command, *args):
    from io import StringIO

    out = StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=StringIO())
        return 0, out.getvalue()
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)


def export(tmp_path, *extra, name="acme.zip"):
    out = tmp_path / name
    code, text = run("audit_export", "--tenant", "acme", "--from", "2000-01-01", "--to", "2100-01-01",
                     "--out", str(out), *extra)
    return code, text, out


def rezip(bundle: Path, target: Path, change):
    """Rewrite a bundle with one member's bytes changed by ``change``."""
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(target, "w") as copy:
        for name in source.namelist():
            data = source.read(name)
            copy.writestr(name, change(name, data))
    return target


def tool(*args):
    result = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def test_export_verifies_with_the_standalone_tool(searches, signing_key, tmp_path):
    code, text, bundle = export(tmp_path)
    assert code == 0, text
    assert "5 events of acme" in text
    code, out = tool(bundle, "--public-key", signing_key)
    assert code == 0, out
    assert "VERIFIED" in out and "kind range" in out and "signing key pinned" in out
    lines = zipfile.ZipFile(bundle).read("events.jsonl").splitlines()
    assert len(lines) == 5 and all(json.loads(line)["tenant_id"] == searches["acme"][0].tenant_id for line in lines)
    assert b"globex" not in zipfile.ZipFile(bundle).read("events.jsonl")


def test_export_is_audited(searches, signing_key, tmp_path):
    export(tmp_path)
    event = AuditEvent.objects.filter(action="audit.export").get()
    assert event.tenant.slug == "acme" and event.auth_method == "cli"
    assert event.detail["count"] == 5 and len(event.detail["bundle_sha256"]) == 64


def test_manifest_holds_range_count_ends_digest_and_a_checkpoint(searches, signing_key, tmp_path):
    _, _, bundle = export(tmp_path)
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    acme = searches["acme"]
    assert manifest["tenant"]["slug"] == "acme" and manifest["count"] == 5
    assert manifest["first"]["seq"] == acme[0].seq and manifest["last"]["mac"] == acme[-1].mac
    assert manifest["gaps"] == [] and manifest["kind"] == "range"
    checkpoint = json.loads(manifest["checkpoint"]["checkpoint"])
    assert checkpoint["seq"] == acme[-1].seq and checkpoint["head_hash"] == acme[-1].mac


@pytest.mark.parametrize("member,part", [("events.jsonl", "events.jsonl"), ("manifest.json", "manifest.json"),
                                         ("manifest.sig", "manifest.json")])
def test_one_changed_byte_fails_naming_the_part(searches, signing_key, tmp_path, member, part):
    _, _, bundle = export(tmp_path)

    def flip(name, data):
        if name != member:
            return data
        index = data.index(b"acme vpn") if b"acme vpn" in data else len(data) // 2
        return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]

    changed = rezip(bundle, tmp_path / "changed.zip", flip)
    code, out = tool(changed, "--public-key", signing_key)
    assert code == 1, out
    assert f"FAIL {part}:" in out and "NOT VERIFIED" in out


def test_a_byte_flipped_in_the_file_itself_is_named(searches, signing_key, tmp_path):
    _, _, bundle = export(tmp_path)
    data = bytearray(bundle.read_bytes())
    header = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
    data[header + 5] ^= 0xFF  # inside the compressed bytes of events.jsonl, the first member
    bundle.write_bytes(bytes(data))
    code, out = tool(bundle, "--public-key", signing_key)
    assert code == 1 and "FAIL events.jsonl" in out


def test_a_bundle_signed_by_another_key_fails(searches, signing_key, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keystore.signing import public_key_text

    _, _, bundle = export(tmp_path)
    other = public_key_text(Ed25519PrivateKey.generate().public_key())
    code, out = tool(bundle, "--public-key", other)
    assert code == 1 and "FAIL manifest.json: signature" in out


def test_a_range_with_a_gap_is_flagged_not_accepted(searches, signing_key, tmp_path):
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [searches["acme"][2].pk])
    code, text, bundle = export(tmp_path)
    assert code == 1 and "GAPS" in text and bundle.exists()
    seq = searches["acme"][2].seq
    code, out = tool(bundle, "--public-key", signing_key)
    assert code == 1 and f"GAP: seq {seq} missing" in out


def test_export_without_signing_key_names_the_variable(searches, no_signing_key, tmp_path):
    code, text, bundle = export(tmp_path)
    assert code == 1 and "AUDIT_SIGNING_KEY_FILE" in text and not bundle.exists()


def test_export_refuses_bad_dates_and_unknown_tenants(tenants, signing_key, tmp_path):
    assert "not a date" in run("audit_export", "--tenant", "acme", "--from", "yesterday", "--to", "2100-01-01",
                               "--out", str(tmp_path / "a.zip"))[1]
    assert "no tenant" in run("audit_export", "--tenant", "nope", "--from", "2000-01-01", "--to", "2100-01-01",
                              "--out", str(tmp_path / "b.zip"))[1]


def test_envelope_opens_with_the_recipients_key_only(searches, signing_key, tmp_path):
    code, out = tool("--new-recipient-key", tmp_path / "auditor.pem")
    assert code == 0
    public = out.strip().rsplit(" ", 1)[1]
    tool("--new-recipient-key", tmp_path / "stranger.pem")
    code, text, bundle = export(tmp_path, "--recipient", public, name="sealed.zip")
    assert code == 0 and f"sealed to {public}" in text
    assert not zipfile.is_zipfile(bundle) and b"acme vpn" not in bundle.read_bytes()
    code, out = tool(bundle, "--public-key", signing_key, "--private-key", tmp_path / "auditor.pem")
    assert code == 0 and "envelope: opened" in out and "VERIFIED" in out
    code, out = tool(bundle, "--public-key", signing_key, "--private-key", tmp_path / "stranger.pem")
    assert code == 2 and "does not open" in out
    code, out = tool(bundle, "--public-key", signing_key)
    assert code == 2 and "give --private-key" in out


def test_audit_verify_export_also_checks_every_mac(searches, signing_key, tmp_path):
    """An insider with the signing key re-signs a bundle with a changed event;
    only the MAC (the audit key) catches it."""
    from keystore.signing import sign

    from audit.ledger.checkpoints import signing_key as key

    _, _, bundle = export(tmp_path)
    assert run("audit_verify_export", str(bundle))[0] == 0
    members = {n: zipfile.ZipFile(bundle).read(n) for n in ("events.jsonl", "manifest.json")}
    events = members["events.jsonl"].replace(b"acme vpn setup 1", b"acme vpn setup X")
    manifest = json.loads(members["manifest.json"])
    import hashlib

    manifest["events_sha256"] = hashlib.sha256(events).hexdigest()
    manifest_bytes = json.dumps(manifest).encode()
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as out:
        out.writestr("events.jsonl", events)
        out.writestr("manifest.json", manifest_bytes)
        out.writestr("manifest.sig", sign(key(), manifest_bytes))
    assert tool(forged, "--public-key", signing_key)[0] == 0, "without the audit key this cannot be seen"
    code, out = run("audit_verify_export", str(forged))
    assert code == 1 and "MAC does not match" in out


def test_tool_checks_a_held_checkpoint_against_the_export(searches, signing_key, tmp_path):
    from audit.ledger.services import record_event

    record_event(action="auth.login", tenant=searches["acme"][0].tenant)
    held = tmp_path / "later.json"
    run("audit_checkpoint", "--tenant", "acme", "--out", str(held))
    # An export made from a database restored to an older state (its checkpoint
    # is older than the one the auditor holds) is caught.
    bundle_data = load_tool()
    _, _, bundle = export(tmp_path)
    result = bundle_data.verify_bundle(bundle.read_bytes(), held_checkpoint=json.loads(held.read_text()))
    assert result.ok
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE action IN ('auth.login', 'audit.export')")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditcheckpoint")
    _, _, older = export(tmp_path, name="older.zip")
    result = bundle_data.verify_bundle(older.read_bytes(), held_checkpoint=json.loads(held.read_text()))
    assert not result.ok and "CUT BACK" in str(result.problems)


@pytest.mark.slow
def test_standalone_tool_runs_in_a_fresh_venv_with_only_cryptography(searches, signing_key, tmp_path):
    _, _, bundle = export(tmp_path)
    venv = tmp_path / "auditor-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    cache = ROOT / "var" / "wheels"
    install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if cache.is_dir() and any(cache.glob("cryptography-*.whl")):
        install += ["--no-index", "--find-links", str(cache)]
    subprocess.run(install + ["cryptography"], check=True, timeout=600)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True).stdout
    assert {line.split("==")[0].lower() for line in listed.split()} <= {"cryptography", "cffi", "pycparser", "pip",
                                                                        "setuptools"}
    result = subprocess.run([str(python), str(TOOL), str(bundle), "--public-key", signing_key],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "VERIFIED" in result.stdout, result.stdout + result.stderr
    events = zipfile.ZipFile(bundle).read("events.jsonl")
    changed = rezip(bundle, tmp_path / "changed.zip",
                    lambda name, data: data.replace(b"acme vpn setup 2", b"acme vpn setup 3") if name == "events.jsonl"
                    else data)
    assert events
    result = subprocess.run([str(python), str(TOOL), str(changed), "--public-key", signing_key],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "FAIL events.jsonl" in result.stdout


# --- pinning the signer: a bundle re-signed with any other key is not VERIFIED ---

def _public_pem(tmp_path) -> Path:
    from cryptography.hazmat.primitives import serialization

    from audit.ledger.checkpoints import signing_key as key

    path = tmp_path / "portal-signing.pub.pem"
    path.write_bytes(key().public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _fingerprint() -> str:
    import hashlib

    from audit.ledger.checkpoints import signing_key as key
    from keystore.signing import public_key_raw

    return hashlib.sha256(public_key_raw(key().public_key())).hexdigest()


def _resigned_by_an_attacker(bundle: Path, target: Path) -> Path:
    """What the attack did: change events.jsonl, fix the manifest, re-sign it and
    its checkpoint with a fresh Ed25519 key, and embed that key in the zip."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keystore.signing import public_key_text, sign, signing_key_id

    attacker = Ed25519PrivateKey.generate()
    with zipfile.ZipFile(bundle) as source:
        events = source.read("events.jsonl").replace(b"acme vpn setup 1", b"acme vpn setup X")
        manifest = json.loads(source.read("manifest.json"))
    assert b"acme vpn setup X" in events
    manifest["events_sha256"] = hashlib.sha256(events).hexdigest()
    checkpoint = manifest["checkpoint"]
    checkpoint["signature"] = sign(attacker, checkpoint["checkpoint"].encode())
    checkpoint["public_key"] = public_key_text(attacker.public_key())
    checkpoint["signing_key_id"] = signing_key_id(attacker.public_key())
    manifest["signing_key"] = {"id": signing_key_id(attacker.public_key()),
                               "public_key": public_key_text(attacker.public_key())}
    manifest_bytes = json.dumps(manifest, sort_keys=True, indent=2).encode() + b"\n"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("events.jsonl", events)
        out.writestr("manifest.json", manifest_bytes)
        out.writestr("manifest.sig", sign(attacker, manifest_bytes) + "\n")
    return target


def _last_line(out: str) -> str:
    return [line for line in out.splitlines() if line.strip()][-1]


def test_a_bundle_re_signed_by_an_attacker_is_not_verified_without_a_pin(searches, signing_key, tmp_path):
    _, _, bundle = export(tmp_path)
    forged = _resigned_by_an_attacker(bundle, tmp_path / "resigned.zip")
    code, out = tool(forged)
    assert code == 3, out
    assert _last_line(out).startswith("UNPINNED: NOT VERIFIED"), out
    assert "VERIFIED" not in [line.strip() for line in out.splitlines()]
    # The genuine bundle is no more than UNPINNED without a pin either.
    code, out = tool(bundle)
    assert code == 3 and _last_line(out).startswith("UNPINNED"), out


@pytest.mark.parametrize("pin", ["--key", "--fingerprint"])
def test_with_the_portal_key_pinned_the_genuine_bundle_verifies_and_the_re_signed_fails(
        searches, signing_key, tmp_path, pin):
    _, _, bundle = export(tmp_path)
    forged = _resigned_by_an_attacker(bundle, tmp_path / "resigned.zip")
    value = _public_pem(tmp_path) if pin == "--key" else _fingerprint()
    code, out = tool(bundle, pin, value)
    assert code == 0 and _last_line(out) == "VERIFIED", out
    code, out = tool(forged, pin, value)
    assert code == 1 and _last_line(out) == "NOT VERIFIED", out
    assert "FAIL manifest.json:" in out


def test_a_short_key_id_is_not_accepted_as_a_fingerprint(searches, signing_key, tmp_path):
    _, _, bundle = export(tmp_path)
    code, out = tool(bundle, "--fingerprint", _fingerprint()[:16])
    assert code == 2 and "64 hex digits" in out


@pytest.mark.parametrize("where", ["appended", "prepended"])
def test_bytes_outside_the_zip_are_refused(searches, signing_key, tmp_path, where):
    _, _, bundle = export(tmp_path)
    data = bundle.read_bytes()
    extra = b"\n-- not covered by any signature --\n" * 3
    changed = tmp_path / f"{where}.zip"
    changed.write_bytes(data + extra if where == "appended" else extra + data)
    assert zipfile.ZipFile(changed).namelist(), "Python's zipfile itself reads it without complaint"
    code, out = tool(changed, "--public-key", signing_key)
    assert code == 1 and "FAIL bundle:" in out and "refused" in out and _last_line(out) == "NOT VERIFIED", out
    if where == "appended":
        assert f"{len(extra)} byte(s) follow the end of the ZIP archive" in out
    code, out = run("audit_verify_export", str(changed))
    assert code == 1 and "FAIL bundle:" in out


def test_bytes_hidden_between_members_are_refused(searches, signing_key, tmp_path):
    """A gap between two members, with every offset in the central directory
    moved to match, still reads as a valid zip."""
    import struct

    _, _, bundle = export(tmp_path)
    data = bytearray(bundle.read_bytes())
    with zipfile.ZipFile(bundle) as source:
        infos = sorted(source.infolist(), key=lambda info: info.header_offset)
        central = source.start_dir
    hidden = b"hidden bytes, covered by no signature"
    at = infos[1].header_offset  # between the first member and the second
    end = len(data) - 22
    position = central
    while data[position:position + 4] == b"PK\x01\x02":  # move every later member's offset
        offset, = struct.unpack("<I", data[position + 42:position + 46])
        if offset >= at:
            data[position + 42:position + 46] = struct.pack("<I", offset + len(hidden))
        names = struct.unpack("<HHH", data[position + 28:position + 34])
        position += 46 + sum(names)
    data[end + 16:end + 20] = struct.pack("<I", central + len(hidden))
    spaced = tmp_path / "spaced.zip"
    spaced.write_bytes(bytes(data[:at]) + hidden + bytes(data[at:]))
    assert zipfile.ZipFile(spaced).read("events.jsonl")
    code, out = tool(spaced, "--public-key", signing_key)
    assert code == 1 and "not belonging to any member" in out, out


def test_audit_verify_export_pins_the_portals_own_key(searches, signing_key, tmp_path, no_signing_key):
    from keystore.keys import get_keyring

    ring = get_keyring()
    ring.signing_key_pem = (tmp_path / "audit-signing.pem").read_bytes()  # the portal's own key again
    _, _, bundle = export(tmp_path)
    forged = _resigned_by_an_attacker(bundle, tmp_path / "resigned.zip")
    code, out = run("audit_verify_export", str(bundle))
    assert code == 0 and "signing key pinned" in out and _last_line(out) == "VERIFIED", out
    code, out = run("audit_verify_export", str(forged))
    assert code == 1 and "FAIL manifest.json: signature" in out
    fingerprint = _fingerprint()
    ring.signing_key_pem = None  # a portal that does not hold the signing key
    code, out = run("audit_verify_export", str(bundle))
    assert code == 3 and "UNPINNED" in out
    code, out = run("audit_verify_export", str(bundle), "--fingerprint", fingerprint)
    assert code == 0, out
    code, out = run("audit_verify_export", str(forged), "--fingerprint", fingerprint)
    assert code == 1 and "not by the pinned fingerprint" in out
