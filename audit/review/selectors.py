"""Reads of the audit log, scoped to what a reader may review.

Scope is decided once, in portal.grants.reviewable_tenant_ids: a compliance
officer reviews the tenants where they hold the `compliance` role, a platform
superuser every chain, anyone else nothing (deny by default). The admin, the
API and the dashboard all start from these functions.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils.translation import gettext as _

from audit.ledger.canonical import compute_mac
from audit.ledger.checkpoints import latest_checkpoint
from audit.ledger.models import GENESIS_HASH, MAC_FIELDS, AuditEvent, ExportJob, Outcome
from audit.ledger.verify import archived_through, verify_chain
from audit.review.exports import export_files_expire, export_jobs_fail_lost
from keystore.keys import get_keyring
from portal.models import Tenant
from portal.scope import get_scoped_or_404, scoped
from portal.grants import reviewable_tenant_ids

SEARCH_ACTIONS = ("search.completed", "search.failed")
# Events that record reading the audit log itself: every page an officer opens
# adds one, so lists hide them by default (they stay in the chain).
REVIEW_ACTIONS = ("audit.view",)


def without_review_events(queryset):
    return queryset.exclude(action__in=REVIEW_ACTIONS)


def can_review(user) -> bool:
    ids = reviewable_tenant_ids(user)
    return ids is None or bool(ids)


def reviewable_events(user):
    ids = reviewable_tenant_ids(user)
    if ids is None:
        return AuditEvent.objects.all()
    if not ids:
        return AuditEvent.objects.none()
    return AuditEvent.objects.filter(tenant_id__in=ids)


def reviewable_tenants(user) -> list[Tenant]:
    ids = reviewable_tenant_ids(user)
    tenants = Tenant.objects.all() if ids is None else Tenant.objects.filter(pk__in=ids)
    return list(tenants.order_by("slug"))


def search_events(queryset, term: str):
    """Free-text search: an IP address matches client_ip exactly; anything else
    matches the request id or username exactly, or appears in the query text."""
    term = term.strip()
    if not term:
        return queryset
    try:
        return queryset.filter(client_ip=str(ipaddress.ip_address(term)))
    except ValueError:
        pass
    return queryset.filter(Q(request_id=term) | Q(username__iexact=term) | Q(query__icontains=term))


_DISTINCT_COLUMNS = {"action", "user_id", "kb_id"}


def distinct_values(tenant_ids: list[int], column: str) -> list:
    """Distinct non-null values of an indexed column within the given tenants,
    by a loose index scan (one index probe per value, not a table scan), so a
    filter dropdown costs the same at a million events as at ten."""
    if column not in _DISTINCT_COLUMNS:
        raise ValueError(column)
    table = AuditEvent._meta.db_table
    sql = f"""WITH RECURSIVE found(value) AS (
                SELECT MIN({column}) FROM {table} WHERE tenant_id = %s
                UNION ALL
                SELECT (SELECT MIN({column}) FROM {table} WHERE tenant_id = %s AND {column} > found.value)
                FROM found WHERE found.value IS NOT NULL)
              SELECT value FROM found WHERE value IS NOT NULL"""
    values = set()
    with connection.cursor() as cursor:
        for tenant_id in tenant_ids:
            cursor.execute(sql, [tenant_id, tenant_id])
            values.update(row[0] for row in cursor.fetchall())
    return sorted(values)


def _scope_ids(user) -> list[int]:
    ids = reviewable_tenant_ids(user)
    return list(Tenant.objects.values_list("pk", flat=True)) if ids is None else ids


def user_choices(user) -> list[tuple[str, str]]:
    """(user id, username) of every user with events in the reviewable tenants."""
    ids = distinct_values(_scope_ids(user), "user_id")
    names = dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))
    return [(str(pk), names.get(pk, f"user #{pk}")) for pk in ids]


def kb_choices(user) -> list[tuple[str, str]]:
    tenant_ids = _scope_ids(user)
    choices = []
    for kb_id in distinct_values(tenant_ids, "kb_id"):
        name = (AuditEvent.objects.filter(tenant_id__in=tenant_ids, kb_id=kb_id).order_by("-occurred_at")
                .values_list("kb_name", flat=True).first())
        choices.append((str(kb_id), f"{name or 'knowledge base'} (#{kb_id})"))
    return choices


def action_choices(user) -> list[tuple[str, str]]:
    present = distinct_values(_scope_ids(user), "action")
    return [(a, a) for a in sorted(set(present))]


# --- integrity of one event, for the admin's detail page ----------------------

@dataclass
class EventIntegrity:
    mac_ok: bool
    link_ok: bool
    mac_text: str
    link_text: str


def event_integrity(event: AuditEvent) -> EventIntegrity:
    key = get_keyring().audit_keys_by_id().get(event.key_id)
    if key is None:
        mac_ok, mac_text = False, _("MAC key %(key_id)s is not held: cannot verify") % {"key_id": event.key_id}
    else:
        fields = {name: getattr(event, name) for name in MAC_FIELDS}
        mac_ok = compute_mac(key, fields) == event.mac
        mac_text = _("HMAC verifies") if mac_ok else _("HMAC does NOT verify: a field was changed or forged")
    if event.seq == 1:
        link_ok = event.prev_hash == GENESIS_HASH
        link_text = (_("first event, links to the genesis hash") if link_ok
                     else _("first event, but prev_hash is not genesis"))
    else:
        previous = (AuditEvent.objects.filter(chain=event.chain, seq=event.seq - 1)
                    .values_list("mac", flat=True).first())
        if previous is None:
            through = archived_through(event.chain)
            if through is not None and through[0] == event.seq - 1:
                link_ok = through[1] == event.prev_hash
                link_text = (_("links to archived seq %(seq)d") % {"seq": through[0]} if link_ok
                             else _("does NOT link to the archive record"))
            else:
                link_ok = False
                link_text = _("the previous event (seq %(seq)d) is missing") % {"seq": event.seq - 1}
        else:
            link_ok = previous == event.prev_hash
            link_text = (_("links to seq %(seq)d") if link_ok
                         else _("does NOT link to seq %(seq)d")) % {"seq": event.seq - 1}
    return EventIntegrity(mac_ok, link_ok, mac_text, link_text)


# --- the API's filtered list ----------------------------------------------------

def event_list(scope, *, filters: dict):
    """The acting tenant's events (audit.review), filtered; the API paginates by seq."""
    events = scoped(scope, AuditEvent, "audit.review")
    if scope.tenant is not None:
        events = events.filter(chain=scope.tenant.pk)
    if filters.get("from"):
        events = events.filter(occurred_at__gte=filters["from"])
    if filters.get("to"):
        events = events.filter(occurred_at__lt=filters["to"])
    for name in ("action", "outcome", "user_id", "kb_id", "request_id", "username"):
        if filters.get(name) not in (None, ""):
            events = events.filter(**{name: filters[name]})
    if filters.get("client_ip"):
        events = events.filter(client_ip=filters["client_ip"])
    if filters.get("q"):
        events = search_events(events, filters["q"])
    return events


# --- the dashboard ----------------------------------------------------------------

@dataclass
class DayCount:
    day: dt.date
    completed: int
    failed: int

    @property
    def total(self) -> int:
        return self.completed + self.failed


def dashboard(scope, *, days: int = 30) -> dict:
    """The acting tenant's audit at a glance; the caller has checked audit.review."""
    tenant = scope.tenant
    since_day = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days - 1)
    since = dt.datetime.combine(since_day, dt.time.min, tzinfo=dt.timezone.utc)
    recent = scoped(scope, AuditEvent, "audit.review").filter(occurred_at__gte=since)
    per_day = {since_day + dt.timedelta(days=i): DayCount(since_day + dt.timedelta(days=i), 0, 0)
               for i in range(days)}
    rows = (recent.filter(action__in=SEARCH_ACTIONS).annotate(day=TruncDate("occurred_at"))
            .values("day", "action").annotate(n=Count("id")).order_by())
    for row in rows:
        day = row["day"]
        if day in per_day:
            if row["action"] == "search.completed":
                per_day[day].completed += row["n"]
            else:
                per_day[day].failed += row["n"]
    searches = sum(d.total for d in per_day.values())
    failed = sum(d.failed for d in per_day.values())
    outcomes = dict(recent.values_list("outcome").annotate(n=Count("id")).order_by())
    events = sum(outcomes.values())
    top_users = list(recent.filter(action="search.completed").exclude(username="")
                     .values("username").annotate(n=Count("id")).order_by("-n", "username")[:10])
    return {
        "days": days,
        "since": since_day,
        "per_day": list(per_day.values()),
        "max_per_day": max([d.total for d in per_day.values()] + [1]),
        "searches": searches,
        "failure_rate": failed / searches if searches else 0.0,
        "events": events,
        "denied": outcomes.get(Outcome.DENIED, 0),
        "denial_rate": outcomes.get(Outcome.DENIED, 0) / events if events else 0.0,
        "top_users": top_users,
        "chain": chain_status(tenant),
    }


def chain_status(tenant) -> dict:
    """The last checkpoint, and whether everything appended since verifies:
    a bounded check (at most a checkpoint interval), fast enough for a page.
    `audit_verify` walks the whole chain."""
    checkpoint = latest_checkpoint(tenant.pk)
    head = AuditEvent.objects.filter(chain=tenant.pk).order_by("-seq").values_list("seq", flat=True).first() or 0
    if checkpoint is None:
        return {"checkpoint": None, "head_seq": head, "ok": None,
                "text": _("no checkpoint yet: run audit_checkpoint, or wait for the next periodic one")}
    present = AuditEvent.objects.filter(chain=tenant.pk, seq=checkpoint.seq).values_list("mac", flat=True).first()
    if checkpoint.seq and present != checkpoint.head_hash and present is not None:
        return {"checkpoint": checkpoint, "head_seq": head, "ok": False,
                "text": _("the event at checkpoint seq %(seq)d was rewritten") % {"seq": checkpoint.seq}}
    if head < checkpoint.seq:
        return {"checkpoint": checkpoint, "head_seq": head, "ok": False,
                "text": _("the chain ends at seq %(head)d, before the checkpoint at seq %(seq)d: cut back")
                % {"head": head, "seq": checkpoint.seq}}
    report = verify_chain(tenant.pk, start_seq=checkpoint.seq + 1, start_hash=checkpoint.head_hash)
    return {"checkpoint": checkpoint, "head_seq": head, "ok": report.ok,
            "text": (_("intact since the checkpoint at seq %(seq)d (%(events)d newer events verified)")
                     % {"seq": checkpoint.seq, "events": report.events} if report.ok
                     else _("broken at seq %(seq)s: %(reason)s") % {"seq": report.bad_seq, "reason": report.reason})}


# --- export jobs ---------------------------------------------------------------

def export_job_get(scope, job_id) -> ExportJob:
    """One export job of the acting tenant (audit.review), or 404 (recorded);
    a lost or expired one is brought up to date first."""
    job = get_scoped_or_404(scope, ExportJob.objects.select_related("created_by"), "audit.review", pk=job_id)
    export_jobs_fail_lost([job])
    export_files_expire([job])
    return job


def export_job_list(scope, limit: int = 5) -> list:
    """The acting tenant's latest export jobs, newest first, up to date."""
    jobs = list(scoped(scope, ExportJob.objects.select_related("created_by"), "audit.review")[:limit])
    export_jobs_fail_lost(jobs)
    export_files_expire(jobs)
    return jobs
