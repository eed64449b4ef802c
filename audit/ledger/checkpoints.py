"""Signed checkpoints: Ed25519 statements of a chain's head (seq, hash, time).

A checkpoint held outside the portal (in an export, or written with
`audit_checkpoint --out`) lets `audit_verify --checkpoint FILE` detect a
chain that was cut back or rewritten after it, even by someone holding the
database and the MAC key: they would also need the signing key.

Cadence (SPEC §8, "written periodically"): `record_event` writes one inside
the append's transaction when ``seq % AUDIT_CHECKPOINT_EVERY_EVENTS == 0``, or
when this process has not written one for the chain in
``AUDIT_CHECKPOINT_EVERY_MINUTES``; every export writes one; the
`audit_checkpoint` command writes one on demand (cron).
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from audit.ledger.canonical import format_time
from audit.ledger.models import GENESIS_HASH, AuditCheckpoint, AuditEvent
from keystore.keys import get_keyring
from keystore.signing import (
    SigningKeyError, load_signing_key, public_key_text, sign, signature_valid,
    signing_key_id,
)

# The name it had before audit/ledger/: log filters and alerts know it.
logger = logging.getLogger("audit.checkpoints")

CHECKPOINT_FORMAT = "portal-audit-checkpoint-v1"


class SigningUnavailable(Exception):
    """No usable Ed25519 signing key: checkpoints and exports cannot be signed."""


@functools.lru_cache(maxsize=2)
def _load(pem: bytes):
    return load_signing_key(pem)


def signing_key():
    """The configured Ed25519 private key, or SigningUnavailable naming the variable."""
    pem = get_keyring().signing_key_pem
    if not pem:
        raise SigningUnavailable(
            "AUDIT_SIGNING_KEY_FILE is not set: checkpoints and exports cannot be signed "
            "(create a key with: python manage.py audit_keygen)")
    try:
        return _load(pem)
    except SigningKeyError as exc:
        raise SigningUnavailable(str(exc)) from None


def checkpoint_payload(*, chain: int, tenant, seq: int, head_hash: str, at: dt.datetime) -> str:
    return json.dumps({
        "format": CHECKPOINT_FORMAT,
        "chain": chain,
        "tenant_id": tenant.pk if tenant is not None else None,
        "tenant": tenant.slug if tenant is not None else None,
        "seq": seq,
        "head_hash": head_hash,
        "time": format_time(at),
    }, sort_keys=True, separators=(",", ":"))


def chain_head(chain: int) -> tuple[int, str]:
    """(seq, mac) of the newest event of a chain; (0, GENESIS_HASH) when empty."""
    last = AuditEvent.objects.filter(chain=chain).order_by("-seq").values_list("seq", "mac").first()
    return last if last else (0, GENESIS_HASH)


def checkpoint_create(*, chain: int, tenant=None, seq: int | None = None, head_hash: str | None = None
                      ) -> AuditCheckpoint:
    """Sign and store a checkpoint of ``chain`` (its current head unless given)."""
    key = signing_key()
    if seq is None:
        seq, head_hash = chain_head(chain)
    now = dt.datetime.now(dt.timezone.utc)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    payload = checkpoint_payload(chain=chain, tenant=tenant, seq=seq, head_hash=head_hash, at=now)
    checkpoint = AuditCheckpoint.objects.create(
        chain=chain, tenant=tenant, seq=seq, head_hash=head_hash, created_at=now, payload=payload,
        signature=sign(key, payload.encode()), signing_key_id=signing_key_id(key.public_key()))
    _last_written[chain] = time.monotonic()
    return checkpoint


def checkpoint_document(checkpoint: AuditCheckpoint) -> dict:
    """The portable form an auditor keeps: payload, signature and the public key."""
    key = signing_key()
    return {
        "checkpoint": checkpoint.payload,
        "signature": checkpoint.signature,
        "signing_key_id": checkpoint.signing_key_id,
        "public_key": public_key_text(key.public_key()),
    }


def latest_checkpoint(chain: int) -> AuditCheckpoint | None:
    return AuditCheckpoint.objects.filter(chain=chain).order_by("-seq", "-id").first()


# --- the periodic hook, called by record_event inside its transaction -------

_last_written: dict[int, float] = {}
_warned_unsigned = False


def checkpoint_due(chain: int, seq: int) -> bool:
    """Cheap test on the append path: no query, no signing unless due."""
    every = settings.AUDIT_CHECKPOINT_EVERY_EVENTS
    if every and seq % every == 0:
        return True
    now = time.monotonic()
    last = _last_written.setdefault(chain, now)
    minutes = settings.AUDIT_CHECKPOINT_EVERY_MINUTES
    return bool(minutes) and now - last >= minutes * 60


def checkpoint_after_append(*, chain: int, tenant, seq: int, head_hash: str) -> None:
    """Write the due checkpoint. A checkpoint that cannot be written is logged,
    never a reason to refuse the event: the chain itself is the record."""
    global _warned_unsigned
    if not get_keyring().signing_key_pem:
        _last_written[chain] = time.monotonic()
        if not _warned_unsigned:
            logger.warning("AUDIT_SIGNING_KEY_FILE is not set: periodic audit checkpoints are not written")
            _warned_unsigned = True
        return
    try:
        with transaction.atomic():
            checkpoint_create(chain=chain, tenant=tenant, seq=seq, head_hash=head_hash)
    except Exception as exc:  # logged; the append itself stands
        _last_written[chain] = time.monotonic()
        logger.error("audit checkpoint for chain %s at seq %s failed: %s", chain, seq, exc.__class__.__name__)


# --- checking a held checkpoint against the database ---------------------------

@dataclass
class CheckpointReport:
    ok: bool
    chain: int
    seq: int
    message: str


class CheckpointFileError(Exception):
    """The checkpoint file is malformed or its signature does not verify."""


def parse_checkpoint_document(document: dict, *, trusted_public_key=None) -> dict:
    """The signed payload of a checkpoint document, after checking its signature
    against ``trusted_public_key`` (default: the portal's own signing key)."""
    try:
        payload_text = document["checkpoint"]
        signature = document["signature"]
    except (KeyError, TypeError):
        raise CheckpointFileError("not a checkpoint file: 'checkpoint' and 'signature' are required") from None
    if trusted_public_key is None:
        trusted_public_key = signing_key().public_key()
        if document.get("public_key") and document["public_key"] != public_key_text(trusted_public_key):
            raise CheckpointFileError("the checkpoint was signed by another key than this portal's "
                                      f"({document.get('signing_key_id')})")
    if not signature_valid(trusted_public_key, payload_text.encode(), signature):
        raise CheckpointFileError("checkpoint signature does not verify: the file was altered or forged")
    payload = json.loads(payload_text)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFileError(f"unknown checkpoint format {payload.get('format')!r}")
    return payload


def check_chain_against_checkpoint(payload: dict) -> CheckpointReport:
    """Is the chain still at least as long as the checkpoint, with the same event at its seq?"""
    chain, seq, head_hash = payload["chain"], payload["seq"], payload["head_hash"]
    head_seq, _ = chain_head(chain)
    if seq == 0:
        return CheckpointReport(True, chain, seq, f"chain {chain}: checkpoint of the empty chain")
    if head_seq < seq:
        return CheckpointReport(False, chain, seq, (
            f"chain {chain}: CUT BACK after the checkpoint: it was signed at seq {seq} "
            f"({payload['time']}), the chain now ends at seq {head_seq}"))
    row = AuditEvent.objects.filter(chain=chain, seq=seq).values_list("mac", flat=True).first()
    if row is None:
        from audit.ledger.verify import archived_through

        through = archived_through(chain)
        if through is not None and seq <= through[0]:
            if seq == through[0] and through[1] != head_hash:
                return CheckpointReport(False, chain, seq, (
                    f"chain {chain}: the archive record's hash at seq {seq} differs from the checkpoint"))
            return CheckpointReport(True, chain, seq, (
                f"chain {chain}: checkpoint seq {seq} lies in the archived range (through seq {through[0]}); "
                "verify it against the archive bundle"))
        return CheckpointReport(False, chain, seq, f"chain {chain}: the event at checkpoint seq {seq} is missing")
    if row != head_hash:
        return CheckpointReport(False, chain, seq, (
            f"chain {chain}: the event at seq {seq} is not the one the checkpoint signed (rewritten history)"))
    return CheckpointReport(True, chain, seq, (
        f"chain {chain}: matches the checkpoint at seq {seq} ({payload['time']}); head now seq {head_seq}"))



# --- checking the checkpoints stored in the database ---------------------------

def pinned_public_keys(extra=()) -> dict:
    """Signing key id → Ed25519 public key for every key a stored checkpoint may
    be checked with: this portal's own (when it holds one) and ``extra`` (older
    keys after a rotation, or the key of a portal whose private key is kept
    elsewhere)."""
    from keystore.signing import signing_key_id as key_id_of

    keys = {}
    if get_keyring().signing_key_pem:
        try:
            own = signing_key().public_key()
        except SigningUnavailable:  # an unusable key file: its checkpoints are reported as unchecked
            own = None
        if own is not None:
            keys[key_id_of(own)] = own
    for key in extra:
        keys[key_id_of(key)] = key
    return keys


@dataclass
class StoredCheckpointsReport:
    chain: int
    ok: bool
    checked: int
    latest: dict | None
    problems: list[str]

    def describe(self) -> list[str]:
        if self.problems:
            return self.problems
        if self.latest is None:
            return []
        return [f"chain {self.chain}: matches its latest stored checkpoint, seq {self.latest['seq']} "
                f"({self.latest['time']}); {self.checked} stored checkpoint(s) verified"]


def check_stored_checkpoints(chain: int, public_keys: dict) -> StoredCheckpointsReport:
    """Check every checkpoint row of ``chain``: its Ed25519 signature (a row
    that does not verify is reported and not trusted), that its columns are
    what was signed, and that the chain still holds, at each signed seq, the
    event that was signed, and reaches at least the latest signed seq.

    This is what makes `audit_verify` catch a cut tail or a deleted chain
    without an outside checkpoint, as long as the checkpoint rows survive."""
    from audit.ledger.verify import archived_through

    rows = list(AuditCheckpoint.objects.filter(chain=chain).order_by("seq", "id")
                .values_list("id", "seq", "head_hash", "payload", "signature", "signing_key_id"))
    problems: list[str] = []
    trusted: list[dict] = []
    for row_id, seq, head_hash, payload_text, signature, key_id in rows:
        where = f"chain {chain}: stored checkpoint id {row_id} (seq {seq})"
        key = public_keys.get(key_id)
        if key is None:
            held = ", ".join(sorted(public_keys)) or "none: AUDIT_SIGNING_KEY_FILE is not set"
            problems.append(f"{where} is signed by {key_id}, not by a key held here ({held}); "
                            "NOT trusted (give the signing public key with --public-key)")
            continue
        if not signature_valid(key, payload_text.encode(), signature):
            problems.append(f"{where}: signature does NOT verify (forged or altered); NOT trusted")
            continue
        try:
            payload = json.loads(payload_text)
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            problems.append(f"{where}: signed payload is not a {CHECKPOINT_FORMAT} checkpoint; NOT trusted")
            continue
        if payload.get("chain") != chain:
            problems.append(f"{where}: it was signed for chain {payload.get('chain')}, "
                            "and was copied into this chain's rows; NOT trusted")
            continue
        if (payload.get("seq"), payload.get("head_hash")) != (seq, head_hash):
            problems.append(f"{where}: its columns were changed after signing (signed: seq {payload.get('seq')}); "
                            "the signed values are checked")
        trusted.append(payload)
    if not trusted:
        return StoredCheckpointsReport(chain, not problems, 0, None, problems)

    latest = max(trusted, key=lambda p: p["seq"])
    head_seq, _ = chain_head(chain)
    if latest["seq"] > head_seq:
        gone = "every event of the chain is gone" if head_seq == 0 else f"the chain now ends at seq {head_seq}"
        problems.append(f"chain {chain}: CUT BACK after its stored checkpoint: it was signed at seq {latest['seq']} "
                        f"({latest['time']}), {gone}")
    wanted = {p["seq"]: p for p in trusted if 0 < p["seq"] <= head_seq}
    macs: dict[int, str] = {}
    seqs = sorted(wanted)
    for start in range(0, len(seqs), 500):
        macs.update(AuditEvent.objects.filter(chain=chain, seq__in=seqs[start:start + 500])
                    .values_list("seq", "mac"))
    through = archived_through(chain) if len(macs) < len(wanted) else None
    for seq in seqs:
        payload = wanted[seq]
        if seq in macs:
            if macs[seq] != payload["head_hash"]:
                problems.append(f"chain {chain}: the event at seq {seq} is not the one its stored checkpoint "
                                f"signed ({payload['time']}): rewritten history")
        elif through is not None and seq <= through[0]:
            if seq == through[0] and through[1] != payload["head_hash"]:
                problems.append(f"chain {chain}: the archive record's hash at seq {seq} differs from its "
                                "stored checkpoint")
        else:
            problems.append(f"chain {chain}: the event at stored checkpoint seq {seq} is missing")
    return StoredCheckpointsReport(chain, not problems, len(trusted), latest, problems)
