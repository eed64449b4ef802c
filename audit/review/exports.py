"""Range exports as background jobs: asked for in a request (the API, or the
dashboard's form), written by the task worker (``manage.py db_worker``),
downloaded when done.

The request checks what it can at once (the range, the recipient key, that a
signing key is configured), so a job that could only fail is never queued.
Records, in the tenant's chain: ``audit.export.submitted`` when it is asked
for; ``audit.export`` (success, with the bundle's digest, like every other
export) or ``audit.export`` (failure) when the worker ends it; and
``audit.export.download`` each time someone fetches the bundle.

The bundle is written under AUDIT_EXPORT_DIR under a temporary name, then
renamed, so a half-written file is never offered; it is removed
AUDIT_EXPORT_KEEP_HOURS after it was written.
"""
from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from audit.ledger import services
from audit.ledger.checkpoints import signing_key
from audit.ledger.export import ExportError, parse_bound, range_events
from audit.ledger.models import ExportJob, Outcome
from keystore.envelope import parse_recipient_public_key
from portal.jobs import end_lost_jobs
from portal.scope import Scope, job_scope

LOST_WORKER = gettext_noop("the export worker stopped before the bundle was written: ask for the export again")
EXPIRED = gettext_noop("the bundle was removed after AUDIT_EXPORT_KEEP_HOURS: ask for the export again")


class ExportGone(Exception):
    """The job's bundle is not (or no longer) there to download."""


def export_dir() -> Path:
    return Path(settings.AUDIT_EXPORT_DIR)


def export_needs_job(tenant, start_text: str, end_text: str) -> bool:
    """Whether a range export asked for in a request is written in the
    background instead: its range holds more than AUDIT_EXPORT_SYNC_MAX_EVENTS
    events. A range that does not parse is not (the export in the request
    refuses it, recorded as it always was)."""
    try:
        start, end = parse_bound(start_text, name="from"), parse_bound(end_text, name="to", end=True)
        events = range_events(tenant, start, end)
    except ExportError:
        return False
    return events.count() > settings.AUDIT_EXPORT_SYNC_MAX_EVENTS


def export_job_submit(*, scope: Scope, start_text: str, end_text: str, recipient: str = "") -> ExportJob:
    """Check the request now (ExportError / EnvelopeError / SigningUnavailable
    answer at once and queue nothing), then queue the export: the job, its
    task and the ``audit.export.submitted`` record in one transaction."""
    from audit.review.tasks import run_audit_export

    start, end = parse_bound(start_text, name="from"), parse_bound(end_text, name="to", end=True)
    total = range_events(scope.tenant, start, end).count()  # also refuses to <= from
    if recipient:
        parse_recipient_public_key(recipient)
    signing_key()  # no key, no bundle: say so now, not after the worker has read the range
    with transaction.atomic():
        job = ExportJob.objects.create(
            tenant=scope.tenant, created_by=scope.user if scope.is_authenticated else None, range_from=start,
            range_to=end, recipient=recipient, context=scope.context, total=total)
        services.record_event(
            action="audit.export.submitted", tenant=scope.tenant, user=scope.user, context=scope.context,
            resource_type="audit_export", resource_id=str(job.pk),
            detail={"job": job.pk, "range": {"from": start.isoformat(), "to": end.isoformat()},
                    "events": total, "recipient": recipient})
        run_audit_export.enqueue(job.pk)
    return job


def export_job_run(job_id: int) -> None:
    """Write one queued export (the task worker calls this). Claims the job so
    a retried task never writes twice."""
    export_jobs_fail_lost()
    export_files_expire()
    now = timezone.now()
    if not ExportJob.objects.filter(pk=job_id, status=ExportJob.Status.QUEUED).update(
            status=ExportJob.Status.RUNNING, started_at=now, heartbeat_at=now):
        return
    job = ExportJob.objects.select_related("tenant", "created_by").get(pk=job_id)
    scope = job_scope(tenant=job.tenant, user=job.created_by, context=job.context)
    directory = export_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"audit-{job.tenant.slug}-{job.pk}-{secrets.token_hex(8)}.{'zip.sealed' if job.recipient else 'zip'}"
    partial = directory / (name + ".part")

    def progress(done: int) -> None:
        ExportJob.objects.filter(pk=job.pk).update(done=done, heartbeat_at=timezone.now())

    try:
        descriptor = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w+b") as out:
            result = services.audit_export_write(
                out=out, tenant=job.tenant, user=scope.user, context=scope.context, kind="range",
                events=range_events(job.tenant, job.range_from, job.range_to), via="job",
                recipient=job.recipient or None, progress=progress, extra_detail={"job": job.pk},
                description={"range": {"from": job.range_from.isoformat(), "to": job.range_to.isoformat()}})
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, directory / name)
    except Exception as exc:  # noqa: BLE001  the job records every failure; the worker goes on
        partial.unlink(missing_ok=True)
        message = str(exc) if isinstance(exc, ExportError) else exc.__class__.__name__
        ExportJob.objects.filter(pk=job.pk).update(status=ExportJob.Status.FAILED, error=message[:500],
                                                   finished_at=timezone.now())
        try:
            services.record_event(action="audit.export", outcome=Outcome.FAILURE, tenant=job.tenant,
                                  user=scope.user, context=scope.context, resource_type="audit_export",
                                  resource_id=str(job.pk), detail={"via": "job", "job": job.pk,
                                                                   "error": exc.__class__.__name__})
        except services.AuditUnavailable:
            pass  # record_event has logged it
        raise
    ExportJob.objects.filter(pk=job.pk).update(
        status=ExportJob.Status.SUCCEEDED, done=result.count, file_name=name, bundle_sha256=result.bundle_sha256,
        finished_at=timezone.now())


def export_jobs_fail_lost(jobs=None) -> int:
    """End as failed (and audit) the running exports whose worker has not
    reported for EXPORT_JOB_STALE_SECONDS (portal.jobs.end_lost_jobs); given
    ``jobs`` (rows a reader holds), only those, updated in place. How many
    were ended."""
    def record(job):
        scope = job_scope(tenant=job.tenant, user=job.created_by, context=job.context)
        services.record_event(action="audit.export", outcome=Outcome.FAILURE, tenant=job.tenant,
                              user=scope.user, context=scope.context, resource_type="audit_export",
                              resource_id=str(job.pk), detail={"via": "job", "job": job.pk, "error": "WorkerLost"})

    running = ExportJob.objects.filter(status=ExportJob.Status.RUNNING).select_related("tenant", "created_by")
    return end_lost_jobs(running, stale_seconds=settings.EXPORT_JOB_STALE_SECONDS,
                         end={"status": ExportJob.Status.FAILED, "error": LOST_WORKER}, record=record, jobs=jobs)


def export_files_expire(jobs=None) -> int:
    """Remove the bundles written more than AUDIT_EXPORT_KEEP_HOURS ago (the
    job stays, saying so); given ``jobs``, only those, updated in place."""
    cutoff = timezone.now() - timedelta(hours=settings.AUDIT_EXPORT_KEEP_HOURS)
    old = ExportJob.objects.filter(status=ExportJob.Status.SUCCEEDED, finished_at__lt=cutoff).exclude(file_name="")
    held = {job.pk: job for job in jobs or ()}
    if jobs is not None:
        old = old.filter(pk__in=held)
    removed = 0
    for job in old:
        (export_dir() / job.file_name).unlink(missing_ok=True)
        ExportJob.objects.filter(pk=job.pk).update(file_name="", error=EXPIRED)
        if job.pk in held:
            held[job.pk].file_name, held[job.pk].error = "", EXPIRED
        removed += 1
    return removed


def export_job_open(*, scope: Scope, job: ExportJob):
    """The finished bundle, opened for reading, its download recorded
    (``audit.export.download``). ExportGone when there is none."""
    if job.status != ExportJob.Status.SUCCEEDED or not job.file_name:
        raise ExportGone(job.error or job.status)
    try:
        handle = open(export_dir() / job.file_name, "rb")
    except FileNotFoundError:
        raise ExportGone(EXPIRED) from None
    try:
        services.record_event(action="audit.export.download", tenant=job.tenant, user=scope.user,
                              context=scope.context, resource_type="audit_export", resource_id=str(job.pk),
                              detail={"job": job.pk, "bundle_sha256": job.bundle_sha256})
    except BaseException:
        handle.close()
        raise
    return handle
