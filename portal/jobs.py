"""What the background jobs (document imports, audit exports) share: the rule
that ends a job whose worker was killed.

A running job's worker writes ``heartbeat_at`` as it goes. A job whose worker
has not reported for ``stale_seconds`` was lost (killed with its transaction
never committed); it is ended once, by whoever notices first — a worker's next
task or someone reading the job — with the app's own audit record written in
the same transaction as the end.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Callable

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone


def end_lost_jobs(running: QuerySet, *, stale_seconds: int, end: dict, record: Callable[[object], None],
                  jobs=None) -> int:
    """End the jobs of ``running`` (a queryset of one job model, narrowed to
    the running status and with what ``record`` reads selected) that have not
    reported for ``stale_seconds``: set ``end`` (plus ``finished_at``) on each,
    unless another process ended it first, and call ``record(job)`` in the
    same transaction. Given ``jobs`` (rows a reader holds), only those are
    looked at, and the ended ones are updated in place. How many were ended."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    lost = running.filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff))
    held = {job.pk: job for job in jobs or ()}
    if jobs is not None:
        lost = lost.filter(pk__in=held)
    ended = 0
    for job in lost:
        values = {**end, "finished_at": timezone.now()}
        with transaction.atomic():
            # The filter on the running queryset makes the end happen once.
            if not running.filter(pk=job.pk).update(**values):
                continue  # another process ended it first
            record(job)
        for name, value in values.items():
            setattr(held.get(job.pk, job), name, value)
        ended += 1
    return ended
