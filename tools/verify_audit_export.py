#!/usr/bin/env python3
"""Verify a portal audit export bundle offline, without the portal.

Needs only the Python standard library and the `cryptography` package. The
format is described in docs/audit-export-format.md; this file is also the
verifier the portal's own `manage.py audit_verify_export` runs, so the two
cannot disagree.

    python verify_audit_export.py BUNDLE (--public-key KEY | --fingerprint SHA256)
        [--private-key FILE]      open a bundle sealed to you (HPKE envelope)
        [--checkpoint FILE]       a checkpoint you kept earlier: the export must not contradict it
        [--require-complete]      also fail a selection that omits events
    python verify_audit_export.py --new-recipient-key FILE
        create an X25519 key pair for receiving sealed exports; prints the public key

KEY (also --key) is the portal's signing public key: base64 of the raw 32
bytes as `audit_keygen` printed it, a PEM public key, or a file holding
either. SHA256 is the key's fingerprint, the hex SHA-256 of those 32 raw bytes
(`audit_keygen` prints it too); the key embedded in the bundle must match it.

Without a pinned key the bundle is only checked against the key it carries
itself, which anyone can generate: the result is then UNPINNED, never
VERIFIED, and the exit status 3.

Exit status: 0 verified against the pinned key, 1 not verified (each problem
is printed, naming the part of the bundle at fault), 2 unusable input or
arguments, 3 unpinned (no problem found, but nothing proves who signed it).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import os
import re
import struct
import sys
import zipfile
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

EXPORT_FORMAT = "portal-audit-export-v1"
CHECKPOINT_FORMAT = "portal-audit-checkpoint-v1"
EVENTS_FILE = "events.jsonl"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
BUNDLE_MEMBERS = (EVENTS_FILE, MANIFEST_FILE, SIGNATURE_FILE)
ENVELOPE_MAGIC = b"PORTAL-ENVELOPE-1\n"
ENVELOPE_SUITE = "HPKE-base/DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-128-GCM"
MAC_DOMAIN = b"portal-audit-event-v1\n"
GENESIS_HASH = "0" * 64
COMPLETE_KINDS = ("range", "archive")
REQUIRED_EVENT_FIELDS = ("chain", "seq", "tenant_id", "occurred_at", "action", "outcome", "key_id",
                         "prev_hash", "mac")


class Unusable(Exception):
    """The input cannot be examined at all (exit status 2)."""


@dataclass
class Result:
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest: dict | None = None
    events: list[dict] = field(default_factory=list)
    pinned: bool = False

    @property
    def ok(self) -> bool:
        """No problem found. Says nothing about who signed: see ``verified``."""
        return not self.problems

    @property
    def verified(self) -> bool:
        """No problem found and the signature checked against a pinned key."""
        return self.ok and self.pinned

    def fail(self, part: str, message: str) -> None:
        self.problems.append((part, message))


def canonical_bytes(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def signing_key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519_" + hashlib.sha256(raw).hexdigest()[:16]


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte public key: what an auditor may pin instead of the key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def parse_fingerprint(text: str) -> str:
    value = text.strip().lower()
    value = value[len("sha256:"):] if value.startswith("sha256:") else value
    value = value.replace(":", "").replace(" ", "")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise Unusable("--fingerprint must be the 64 hex digits of the SHA-256 of the raw public key "
                       "(a short key id is not enough to pin a key)")
    return value


def load_public_key(text: str) -> Ed25519PublicKey:
    text = text.strip()
    if os.path.isfile(text):
        with open(text, encoding="ascii") as handle:
            text = handle.read().strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise Unusable("--public-key is not an Ed25519 public key")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError):
        raise Unusable("--public-key is neither base64 of a 32-byte Ed25519 key nor a PEM public key") from None


def signature_ok(public_key: Ed25519PublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        public_key.verify(base64.b64decode(signature_b64.strip(), validate=True), message)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def open_envelope(data: bytes, private_key_pem: bytes | None) -> bytes:
    """The bundle inside an HPKE envelope (see keystore/envelope.py)."""
    end = data.find(b"\n", len(ENVELOPE_MAGIC))
    if end < 0:
        raise Unusable("envelope: header is truncated")
    header = data[:end + 1]
    try:
        fields = json.loads(data[len(ENVELOPE_MAGIC):end])
    except ValueError:
        raise Unusable("envelope: header is not JSON") from None
    if fields.get("suite") != ENVELOPE_SUITE:
        raise Unusable(f"envelope: unsupported suite {fields.get('suite')!r}")
    if private_key_pem is None:
        raise Unusable(f"the bundle is sealed to recipient {fields.get('recipient')}; give --private-key")
    try:
        private_key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        raise Unusable("--private-key is not an unencrypted PEM private key") from None
    if not isinstance(private_key, X25519PrivateKey):
        raise Unusable("--private-key is not an X25519 key")
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)
    try:
        return suite.decrypt(data[end + 1:], private_key, info=header)
    except InvalidTag:
        raise Unusable("envelope: does not open with this private key "
                       "(sealed to another recipient, or altered)") from None


class Damaged(Exception):
    """One part of the bundle cannot be read back: it was altered or truncated."""

    def __init__(self, part: str, message: str):
        super().__init__(message)
        self.part = part


_LOCAL_HEADER, _CENTRAL_END = b"PK\x03\x04", b"PK\x05\x06"
_ZIP64_LOCATOR, _ZIP64_END = b"PK\x06\x07", b"PK\x06\x06"


def check_zip_framing(data: bytes) -> None:
    """The bundle must be exactly one ZIP archive: its first member at byte 0,
    members back to back, the central directory right after them, and the end
    record the file's last 22 bytes (no comment). Python's zipfile (like most
    readers) silently accepts bytes before, between and after; those bytes are
    covered by no signature, so a bundle carrying them is refused."""
    end = len(data) - 22
    if end < 0 or data[end:end + 4] != _CENTRAL_END:
        found = data.rfind(_CENTRAL_END, max(0, len(data) - 65557))
        if found < 0:
            raise Damaged("bundle", "not a readable export bundle (no end of ZIP central directory)")
        raise Damaged("bundle", f"{len(data) - found - 22} byte(s) follow the end of the ZIP archive "
                                "(appended data or a ZIP comment, covered by no signature): refused")
    cd_size, cd_offset = struct.unpack("<II", data[end + 12:end + 20])
    cd_end = end
    if end >= 20 and data[end - 20:end - 16] == _ZIP64_LOCATOR:
        (z64_offset,) = struct.unpack("<Q", data[end - 12:end - 4])
        if data[z64_offset:z64_offset + 4] != _ZIP64_END:
            raise Damaged("bundle", "the ZIP64 end record is not where its locator says")
        (record_size,) = struct.unpack("<Q", data[z64_offset + 4:z64_offset + 12])
        if z64_offset + 12 + record_size != end - 20:
            raise Damaged("bundle", "bytes were inserted after the ZIP64 end record: refused")
        cd_size, cd_offset = struct.unpack("<QQ", data[z64_offset + 40:z64_offset + 56])
        cd_end = z64_offset
    if cd_offset + cd_size != cd_end:
        raise Damaged("bundle", "the ZIP central directory is not where the end record says "
                                "(bytes were prepended or inserted): refused")
    if not data.startswith(_LOCAL_HEADER):
        raise Damaged("bundle", "the file does not start with a ZIP member (bytes were prepended): refused")


def _check_members_contiguous(data: bytes, infos: list, cd_offset: int) -> None:
    expected = 0
    infos = sorted(infos, key=lambda info: info.header_offset)
    for number, info in enumerate(infos):
        start = info.header_offset
        if start != expected or data[start:start + 4] != _LOCAL_HEADER:
            raise Damaged("bundle", f"{start - expected} byte(s) not belonging to any member precede "
                                    f"{info.filename}: refused")
        name_length, extra_length = struct.unpack("<HH", data[start + 26:start + 30])
        end = start + 30 + name_length + extra_length + info.compress_size
        following = infos[number + 1].header_offset if number + 1 < len(infos) else cd_offset
        if info.flag_bits & 0x08:  # a data descriptor: CRC and sizes after the data, maybe with a signature
            ends = [end + extra for extra in (12, 16, 20, 24)]
            end = following if following in ends else ends[0]
        expected = end
    if expected != cd_offset:
        raise Damaged("bundle", f"{cd_offset - expected} byte(s) not belonging to any member precede the "
                                "ZIP central directory: refused")


def read_bundle(data: bytes) -> dict[str, bytes]:
    check_zip_framing(data)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise Damaged("bundle", f"not a readable export bundle ({exc.__class__.__name__})") from None
    if sorted(names) != sorted(BUNDLE_MEMBERS):
        raise Damaged("bundle", f"expected exactly {', '.join(BUNDLE_MEMBERS)}; found {', '.join(names)}")
    _check_members_contiguous(data, archive.infolist(), archive.start_dir)
    parts = {}
    for name in BUNDLE_MEMBERS:
        try:
            parts[name] = archive.read(name)
        except Exception as exc:  # CRC, zlib or truncation errors of a damaged member
            raise Damaged(name, f"cannot be read back, it was altered or truncated "
                                f"({exc.__class__.__name__}: {exc})") from None
    return parts


def check_checkpoint(result: Result, part: str, document: dict, public_key: Ed25519PublicKey) -> dict | None:
    try:
        payload_text, signature = document["checkpoint"], document["signature"]
    except (KeyError, TypeError):
        result.fail(part, "not a checkpoint ('checkpoint' and 'signature' are required)")
        return None
    if not signature_ok(public_key, payload_text.encode("utf-8"), signature):
        result.fail(part, "checkpoint signature does not verify")
        return None
    payload = json.loads(payload_text)
    if payload.get("format") != CHECKPOINT_FORMAT:
        result.fail(part, f"unknown checkpoint format {payload.get('format')!r}")
        return None
    return payload


def find_gaps(seqs: list[int]) -> list[list[int]]:
    return [[a + 1, b - 1] for a, b in zip(seqs, seqs[1:]) if b > a + 1]


def verify_bundle(data: bytes, *, public_key: Ed25519PublicKey | None = None,
                  private_key_pem: bytes | None = None, held_checkpoint: dict | None = None,
                  require_complete: bool = False, mac_keys: dict[str, bytes] | None = None,
                  fingerprint: str | None = None) -> Result:
    """Every check this format allows without the portal; ``mac_keys`` (key id →
    key) adds the per-event MAC check for whoever holds the audit key.

    The signer is pinned by ``public_key`` or by ``fingerprint`` (hex SHA-256 of
    the raw public key, which the embedded key must match). With neither, the
    embedded key is used and ``result.verified`` stays False (UNPINNED)."""
    result = Result()
    if fingerprint is not None:
        fingerprint = parse_fingerprint(fingerprint)
    if data.startswith(ENVELOPE_MAGIC):
        data = open_envelope(data, private_key_pem)
        result.notes.append("envelope: opened with the recipient's private key")
    try:
        parts = read_bundle(data)
    except Damaged as exc:
        result.fail(exc.part, str(exc))
        return result

    try:
        manifest = json.loads(parts[MANIFEST_FILE])
    except ValueError:
        manifest = None
    signing = (manifest or {}).get("signing_key", {}) if isinstance(manifest, dict) else {}
    if public_key is None:
        try:
            embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(signing.get("public_key", ""),
                                                                           validate=True))
        except (ValueError, TypeError, AttributeError):
            raise Unusable("manifest.json: no usable embedded public key; give --public-key") from None
        if fingerprint is not None:
            if key_fingerprint(embedded) != fingerprint:
                result.fail("manifest.json", f"the bundle was signed by key {signing_key_id(embedded)} "
                                             f"(fingerprint {key_fingerprint(embedded)}), not by the pinned "
                                             f"fingerprint {fingerprint}")
                return result
            result.pinned = True
            result.notes.append(f"signing key pinned by fingerprint: {signing_key_id(embedded)}")
        else:
            result.notes.append(f"signature checked only against the key embedded in the bundle "
                                f"({signing_key_id(embedded)}, fingerprint {key_fingerprint(embedded)}), which "
                                "anyone can generate: pin the portal's key with --public-key or --fingerprint")
        public_key = embedded
    else:
        if fingerprint is not None and key_fingerprint(public_key) != fingerprint:
            raise Unusable("--public-key and --fingerprint name different keys")
        result.pinned = True
        result.notes.append(f"signing key pinned: {signing_key_id(public_key)}")
    if not signature_ok(public_key, parts[MANIFEST_FILE], parts[SIGNATURE_FILE].decode("ascii", "replace")):
        result.fail("manifest.json", "signature (manifest.sig) does not verify: the manifest or the "
                                     "signature was altered, or it was signed by another key")
        return result
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        result.fail("manifest.json", f"not an export manifest of format {EXPORT_FORMAT}")
        return result
    result.manifest = manifest

    digest = hashlib.sha256(parts[EVENTS_FILE]).hexdigest()
    if digest != manifest.get("events_sha256"):
        result.fail("events.jsonl", f"SHA-256 {digest} does not match the manifest's "
                                    f"{manifest.get('events_sha256')}: the events file was altered")
        return result

    events = []
    for number, line in enumerate(parts[EVENTS_FILE].splitlines(), start=1):
        try:
            event = json.loads(line)
        except ValueError:
            result.fail("events.jsonl", f"line {number} is not JSON")
            return result
        missing = [name for name in REQUIRED_EVENT_FIELDS if name not in event]
        if missing:
            result.fail("events.jsonl", f"line {number} lacks {', '.join(missing)}")
            return result
        events.append(event)
    result.events = events

    chain = manifest.get("chain")
    tenant_id = (manifest.get("tenant") or {}).get("id")
    if len(events) != manifest.get("count"):
        result.fail("events.jsonl", f"{len(events)} events, the manifest says {manifest.get('count')}")
    for event in events:
        if event["chain"] != chain or event["tenant_id"] != tenant_id:
            result.fail("events.jsonl", f"event seq {event['seq']} belongs to chain {event['chain']}, "
                                        f"not to this export's chain {chain}")
            break
    seqs = [e["seq"] for e in events]
    if any(b <= a for a, b in zip(seqs, seqs[1:])):
        result.fail("events.jsonl", "events are not in strictly increasing seq order (reordered or repeated)")
        return result
    for previous, event in zip(events, events[1:]):
        if event["seq"] == previous["seq"] + 1 and event["prev_hash"] != previous["mac"]:
            result.fail("events.jsonl", f"event seq {event['seq']} does not link to seq {previous['seq']} "
                                        "(an event was altered, replaced or inserted)")
    if events:
        first, last = events[0], events[-1]
        declared_first, declared_last = manifest.get("first") or {}, manifest.get("last") or {}
        if (first["seq"], first["mac"], first["prev_hash"]) != (
                declared_first.get("seq"), declared_first.get("mac"), declared_first.get("prev_hash")):
            result.fail("events.jsonl", "the first event is not the one the manifest names")
        if (last["seq"], last["mac"]) != (declared_last.get("seq"), declared_last.get("mac")):
            result.fail("events.jsonl", "the last event is not the one the manifest names")
        if first["seq"] == 1 and first["prev_hash"] != GENESIS_HASH:
            result.fail("events.jsonl", "seq 1 does not start from the genesis hash")

    gaps = find_gaps(seqs)
    if gaps != manifest.get("gaps", []):
        result.fail("manifest.json", f"gaps found {gaps} differ from the gaps the manifest declares "
                                     f"{manifest.get('gaps')}")
    kind = manifest.get("kind")
    gap_text = ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in gaps)
    if gaps and kind in COMPLETE_KINDS:
        result.fail("events.jsonl", f"the {kind} export has a GAP: seq {gap_text} missing from the chain")
    elif gaps:
        omitted = sum(b - a + 1 for a, b in gaps)
        message = f"PARTIAL: this {kind} omits {omitted} event(s) of the chain (seq {gap_text})"
        if require_complete:
            result.fail("events.jsonl", message)
        else:
            result.notes.append(message + "; links are checked between consecutive events only")

    if mac_keys is not None:
        for event in events:
            key = mac_keys.get(event["key_id"])
            fields = {k: v for k, v in event.items() if k != "mac"}
            if key is None:
                result.fail("events.jsonl", f"event seq {event['seq']}: MAC key {event['key_id']} is not held")
                break
            mac = hmac.new(key, MAC_DOMAIN + canonical_bytes(fields), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(mac, event["mac"]):
                result.fail("events.jsonl", f"event seq {event['seq']}: MAC does not match")
                break
        else:
            result.notes.append(f"MACs of all {len(events)} events verified with the audit key")

    checkpoint = check_checkpoint(result, "manifest.json (checkpoint)", manifest.get("checkpoint") or {},
                                  public_key)
    if checkpoint is not None:
        if checkpoint.get("chain") != chain:
            result.fail("manifest.json (checkpoint)", "the checkpoint is of another chain")
        elif events and checkpoint["seq"] < events[-1]["seq"]:
            result.fail("manifest.json (checkpoint)", "the checkpoint is older than the last exported event")
        elif events and checkpoint["seq"] == events[-1]["seq"] and checkpoint["head_hash"] != events[-1]["mac"]:
            result.fail("manifest.json (checkpoint)", "the checkpoint's head hash differs from the last event")
        else:
            result.notes.append(f"checkpoint: chain {chain} head seq {checkpoint['seq']} at {checkpoint['time']}")
    if held_checkpoint is not None:
        held = check_checkpoint(result, "--checkpoint", held_checkpoint, public_key)
        if held is not None and checkpoint is not None and held.get("chain") == chain:
            if checkpoint["seq"] < held["seq"]:
                result.fail("--checkpoint", f"the chain was CUT BACK: your checkpoint saw seq {held['seq']}, "
                                            f"the export's checkpoint says the head is seq {checkpoint['seq']}")
            by_seq = {e["seq"]: e for e in events}
            if held["seq"] in by_seq and by_seq[held["seq"]]["mac"] != held["head_hash"]:
                result.fail("--checkpoint", f"event seq {held['seq']} differs from the one your checkpoint signed")
    return result


def describe(result: Result) -> str:
    lines = []
    manifest = result.manifest or {}
    if manifest:
        tenant = manifest.get("tenant") or {}
        lines.append(f"export of {tenant.get('slug')} (chain {manifest.get('chain')}), kind {manifest.get('kind')}, "
                     f"{manifest.get('count')} events, seq {(manifest.get('first') or {}).get('seq')}.."
                     f"{(manifest.get('last') or {}).get('seq')}, made {manifest.get('created_at')}")
    lines.extend(f"note: {note}" for note in result.notes)
    lines.extend(f"FAIL {part}: {message}" for part, message in result.problems)
    if not result.ok:
        lines.append("NOT VERIFIED")
    elif not result.pinned:
        lines.append("UNPINNED: NOT VERIFIED. The bundle is consistent, but its signature was checked only "
                     "against the key it carries itself, so anyone could have made it. Verify it with the "
                     "portal's key: --public-key KEY or --fingerprint SHA256.")
    else:
        lines.append("VERIFIED")
    return "\n".join(lines)


def exit_status(result: Result) -> int:
    """0 verified, 1 not verified, 3 unpinned (consistent, signer unproven)."""
    if not result.ok:
        return 1
    return 0 if result.pinned else 3


def new_recipient_key(path: str) -> str:
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?")
    parser.add_argument("--public-key", "--key", dest="public_key",
                        help="the portal's signing public key (base64, PEM, or a file holding either)")
    parser.add_argument("--fingerprint", help="hex SHA-256 of the portal's raw signing public key")
    parser.add_argument("--private-key")
    parser.add_argument("--checkpoint")
    parser.add_argument("--require-complete", action="store_true")
    parser.add_argument("--new-recipient-key", metavar="FILE")
    args = parser.parse_args(argv)
    try:
        if args.new_recipient_key:
            print(f"recipient public key (X25519, base64): {new_recipient_key(args.new_recipient_key)}")
            return 0
        if not args.bundle:
            parser.error("give a BUNDLE to verify")
        with open(args.bundle, "rb") as handle:
            data = handle.read()
        private_pem = None
        if args.private_key:
            with open(args.private_key, "rb") as handle:
                private_pem = handle.read()
        held = None
        if args.checkpoint:
            with open(args.checkpoint, encoding="utf-8") as handle:
                held = json.load(handle)
        public_key = load_public_key(args.public_key) if args.public_key else None
        result = verify_bundle(data, public_key=public_key, private_key_pem=private_pem, held_checkpoint=held,
                               require_complete=args.require_complete, fingerprint=args.fingerprint)
    except Unusable as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"ERROR {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2
    print(describe(result))
    return exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
