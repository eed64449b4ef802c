"""Retention: archive a chain's events older than AUDIT_RETENTION_DAYS into a
signed bundle, then remove them through the one sanctioned DELETE.

The slow part (verifying the range and writing the archive) runs before the
write transaction, on events that can no longer change. The transaction then
re-checks the range's ends under the chain lock, writes an
ArchiveAuthorisation (the database's DELETE trigger allows deleting only rows
it covers), deletes the prefix, records `audit.archive` with the archive's
digest and the last archived seq and hash (where `verify_chain` starts from
afterwards), and removes the authorisation.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Min

from audit.ledger.checkpoints import signing_key
from audit.ledger.export import standalone_verifier, write_bundle
from audit.ledger.models import GENESIS_HASH, ArchiveAuthorisation, AuditEvent
from audit.ledger.services import _lock_chain, record_event
from audit.ledger.verify import ARCHIVE_ACTION, archived_through, verify_chain


class ArchiveRefused(Exception):
    """The chain is not in a state that may be archived (it does not verify…)."""


@dataclass
class ArchivePlan:
    chain: int
    tenant: object
    first_seq: int
    through_seq: int
    start_hash: str

    @property
    def count(self) -> int:
        return self.through_seq - self.first_seq + 1


@dataclass
class ArchiveResult:
    plan: ArchivePlan
    path: Path
    sha256: str
    through_hash: str


def retention_cutoff(now: dt.datetime | None = None) -> dt.datetime:
    return (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=settings.AUDIT_RETENTION_DAYS)


def archive_plan(*, chain: int, tenant, cutoff: dt.datetime) -> ArchivePlan | None:
    """What archiving ``chain`` at ``cutoff`` would remove, or None if nothing."""
    span = AuditEvent.objects.filter(chain=chain).aggregate(first=Min("seq"))
    old = AuditEvent.objects.filter(chain=chain, occurred_at__lt=cutoff).aggregate(through=Max("seq"))
    if span["first"] is None or old["through"] is None:
        return None
    first, through = span["first"], old["through"]
    if first == 1:
        start_hash = GENESIS_HASH
    else:
        record = archived_through(chain)
        if record is None or record[0] != first - 1:
            raise ArchiveRefused(f"chain {chain} starts at seq {first} without an archive record: run audit_verify")
        start_hash = record[1]
    return ArchivePlan(chain, tenant, first, through, start_hash)


def archive_chain(*, plan: ArchivePlan, out_dir: Path, context: dict | None = None) -> ArchiveResult:
    signing_key()  # fail before any work without a key
    report = verify_chain(plan.chain, start_seq=plan.first_seq, start_hash=plan.start_hash, end_seq=plan.through_seq)
    if not report.ok or report.head_seq != plan.through_seq:
        raise ArchiveRefused(f"refusing to archive a chain that does not verify: {report.describe()}")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    slug = plan.tenant.slug if plan.tenant is not None else "platform"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"audit-archive-{slug}-seq{plan.first_seq}-{plan.through_seq}-{stamp}.zip"
    events = AuditEvent.objects.filter(chain=plan.chain, seq__gte=plan.first_seq, seq__lte=plan.through_seq)
    try:
        with open(path, "x+b") as handle:
            written = write_bundle(handle, tenant=plan.tenant, events=events, kind="archive",
                                   description={"archive": {"first_seq": plan.first_seq,
                                                            "through_seq": plan.through_seq,
                                                            "retention_days": settings.AUDIT_RETENTION_DAYS}},
                                   created_by="manage.py audit_archive")
        verifier = standalone_verifier()
        check = verifier.verify_bundle(path.read_bytes(), public_key=signing_key().public_key(),
                                       require_complete=True)
        if not check.ok or written.count != plan.count:
            raise ArchiveRefused(f"the archive written to {path} does not verify: {check.problems}")
        through_hash = written.manifest["last"]["mac"]
        with transaction.atomic():
            _lock_chain(plan.chain)
            ends = dict(AuditEvent.objects.filter(chain=plan.chain, seq__in=[plan.first_seq, plan.through_seq])
                        .values_list("seq", "mac"))
            first_mac = written.manifest["first"]["mac"]
            if ends.get(plan.first_seq) != first_mac or ends.get(plan.through_seq) != through_hash:
                raise ArchiveRefused("the chain changed while the archive was written; nothing was removed")
            # The record is appended before the prefix goes, so that it takes the
            # next seq even when the whole chain is archived: appended after, it
            # would restart an emptied chain at seq 1 from the genesis hash.
            record_event(action=ARCHIVE_ACTION, tenant=plan.tenant, context=context,
                         resource_type="audit_archive", resource_id=written.bundle_sha256[:32],
                         detail={"archive_file": path.name, "archive_sha256": written.bundle_sha256,
                                 "first_seq": plan.first_seq, "through_seq": plan.through_seq,
                                 "through_hash": through_hash, "count": plan.count,
                                 "retention_days": settings.AUDIT_RETENTION_DAYS})
            authorisation = ArchiveAuthorisation.objects.create(
                chain=plan.chain, through_seq=plan.through_seq, created_at=dt.datetime.now(dt.timezone.utc))
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {AuditEvent._meta.db_table} WHERE chain = %s AND seq <= %s",
                               [plan.chain, plan.through_seq])
                deleted = cursor.rowcount
            if deleted != plan.count:
                raise ArchiveRefused(f"expected to remove {plan.count} events, the database removed {deleted}")
            ArchiveAuthorisation.objects.filter(pk=authorisation.pk).delete()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return ArchiveResult(plan, path, written.bundle_sha256, through_hash)
