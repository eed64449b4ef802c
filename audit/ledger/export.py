"""Signed export bundles (SPEC §8; format in docs/audit-export-format.md).

A bundle is a ZIP holding `events.jsonl` (one event a line, every MAC'd
field plus its MAC), `manifest.json` (tenant, range, count, first/last seq and
hashes, SHA-256 of the events file, gaps, a fresh signed checkpoint) and
`manifest.sig` (Ed25519 over the manifest's exact bytes). Optionally the
whole ZIP is sealed to one auditor's X25519 key (keystore/envelope.py).

Writing a bundle records nothing; the services that hand one out record
`audit.export` (audit/ledger/services.py).
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.util
import io
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from django.conf import settings

from audit.ledger.canonical import canonical_bytes, format_time
from audit.ledger.checkpoints import checkpoint_create, checkpoint_document, signing_key
from audit.ledger.models import MAC_FIELDS, PLATFORM_CHAIN, AuditEvent
from keystore import envelope
from keystore.signing import public_key_text, sign, signing_key_id

EXPORT_FORMAT = "portal-audit-export-v1"
EVENTS_FILE, MANIFEST_FILE, SIGNATURE_FILE = "events.jsonl", "manifest.json", "manifest.sig"


class ExportError(Exception):
    """The export cannot be made as asked (bad range, bad recipient key…)."""


@dataclass
class ExportResult:
    manifest: dict
    bundle_sha256: str
    sealed_to: str | None

    @property
    def count(self) -> int:
        return self.manifest["count"]

    @property
    def gaps(self) -> list[list[int]]:
        return self.manifest["gaps"]


def event_line(row: dict) -> bytes:
    """One line of events.jsonl: the canonical JSON of every MAC'd field and the MAC."""
    return canonical_bytes({**{name: row[name] for name in MAC_FIELDS}, "mac": row["mac"]}) + b"\n"


def range_events(tenant, start: dt.datetime, end: dt.datetime):
    """Every event of the tenant's chain with start <= occurred_at < end, in chain order."""
    if end <= start:
        raise ExportError("'to' must be after 'from'")
    return (AuditEvent.objects.filter(chain=tenant.pk, tenant=tenant, occurred_at__gte=start, occurred_at__lt=end)
            .order_by("seq"))


def parse_bound(text: str, *, name: str, end: bool = False) -> dt.datetime:
    """A date (YYYY-MM-DD: the whole day, so 'to' includes it) or an ISO-8601 datetime, as UTC."""
    text = (text or "").strip()
    if not text:
        raise ExportError(f"'{name}' is required (YYYY-MM-DD or an ISO-8601 time)")
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            value = dt.datetime.combine(day, dt.time.min, tzinfo=dt.timezone.utc)
            return value + dt.timedelta(days=1) if end else value
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        # In UTC now: an offset that moves the time past year 9999 (or before 1) fails here, not in the database.
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)
    except ValueError:
        raise ExportError(f"'{name}' is not a date (YYYY-MM-DD) or an ISO-8601 time: {text[:40]!r}") from None
    except OverflowError:
        raise ExportError(f"'{name}' is out of range: {text[:40]!r} is not a time between the years 1 and 9999"
                          + (" (the whole day of 'to' must end before the year 10000)" if end else "")) from None


def _iter_rows(events) -> Iterable[dict]:
    return events.order_by("seq").values("mac", *MAC_FIELDS).iterator(chunk_size=5000)


PROGRESS_EVERY = 5000


def write_bundle(out: BinaryIO, *, tenant, events, kind: str, description: dict, created_by: str,
                 recipient: str | None = None, progress: Callable[[int], None] | None = None) -> ExportResult:
    """Write the bundle of ``events`` (a queryset of one tenant's chain) to ``out``.

    kind: "range" (every event of a time range: any gap is an error for the
    verifier), "selection" (a filtered subset: its gaps are listed as omitted),
    or "archive" (a retention archive: a complete prefix of the chain).
    ``progress(count)`` is called every PROGRESS_EVERY events written."""
    key = signing_key()
    recipient_key = envelope.parse_recipient_public_key(recipient) if recipient else None
    chain = tenant.pk if tenant is not None else PLATFORM_CHAIN
    target = io.BytesIO() if recipient_key is not None else out
    digest = hashlib.sha256()
    count, first, last, gaps, previous_seq, key_ids = 0, None, None, [], None, set()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(EVENTS_FILE, "w", force_zip64=True) as events_file:
            for row in _iter_rows(events):
                if row["chain"] != chain:
                    raise ExportError("an export holds the events of one tenant's chain only")
                line = event_line(row)
                events_file.write(line)
                digest.update(line)
                if previous_seq is not None and row["seq"] > previous_seq + 1:
                    gaps.append([previous_seq + 1, row["seq"] - 1])
                previous_seq = row["seq"]
                if first is None:
                    first = {"seq": row["seq"], "mac": row["mac"], "prev_hash": row["prev_hash"],
                             "occurred_at": format_time(row["occurred_at"])}
                last = {"seq": row["seq"], "mac": row["mac"], "occurred_at": format_time(row["occurred_at"])}
                key_ids.add(row["key_id"])
                count += 1
                if progress is not None and count % PROGRESS_EVERY == 0:
                    progress(count)
        checkpoint = checkpoint_create(chain=chain, tenant=tenant)
        manifest = {
            "format": EXPORT_FORMAT,
            "tenant": {"id": tenant.pk, "slug": tenant.slug, "name": tenant.name} if tenant is not None else None,
            "chain": chain,
            "kind": kind,
            **description,
            "created_at": format_time(dt.datetime.now(dt.timezone.utc)),
            "created_by": created_by,
            "count": count,
            "first": first,
            "last": last,
            "gaps": gaps,
            "events_file": EVENTS_FILE,
            "events_sha256": digest.hexdigest(),
            "mac_key_ids": sorted(key_ids),
            "checkpoint": checkpoint_document(checkpoint),
            "signing_key": {"id": signing_key_id(key.public_key()), "public_key": public_key_text(key.public_key())},
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False).encode() + b"\n"
        archive.writestr(MANIFEST_FILE, manifest_bytes)
        archive.writestr(SIGNATURE_FILE, sign(key, manifest_bytes) + "\n")
    if recipient_key is not None:
        sealed = envelope.seal(target.getvalue(), recipient_key, content="portal-audit-export-v1 bundle (zip)")
        out.write(sealed)
        bundle_sha256 = hashlib.sha256(sealed).hexdigest()
    else:
        bundle_sha256 = _sha256_of(out)
    return ExportResult(manifest, bundle_sha256, envelope.recipient_public_text(recipient_key)
                        if recipient_key is not None else None)


def _sha256_of(out: BinaryIO) -> str:
    out.flush()
    position = out.tell()
    out.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: out.read(1 << 20), b""):
        digest.update(block)
    out.seek(position)
    return digest.hexdigest()


# --- verification: the standalone tool is the one verifier --------------------

@functools.lru_cache(maxsize=1)
def standalone_verifier():
    """tools/verify_audit_export.py as a module: the portal verifies bundles with
    exactly the code it gives auditors."""
    name = "portal_tools_verify_audit_export"
    path = Path(settings.BASE_DIR) / "tools" / "verify_audit_export.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
