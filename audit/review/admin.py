"""Audit review in the Django admin, for compliance officers.

Scope comes from Membership(role=compliance), not from Django model
permissions: an officer sees the events of the tenants where they hold that
role (a platform superuser sees every chain), in the list, the detail page,
every filter's choices and every export. Read-only. Each page view records
`audit.view`; the export action records `audit.export`.

Built for a million events: filters and dropdowns use indexes (the
dropdowns by a loose index scan), and the change list never counts the
whole table (CappedCountPaginator, show_full_result_count = False).
"""
from __future__ import annotations

import datetime as dt
import tempfile

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.paginator import Paginator
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

from audit.ledger import services
from audit.ledger.checkpoints import SigningUnavailable
from audit.ledger.context import request_context
from audit.ledger.export import ExportError
from audit.ledger.models import AuditEvent
from audit.review import selectors
from audit.review.api import bundle_response
from keystore.envelope import EnvelopeError
from portal.models import Tenant

QUERY_PREVIEW = 60


def _scope(request) -> list[int] | None:
    """The tenants this request may review (None: all), looked up once per request."""
    if not hasattr(request, "_audit_scope"):
        request._audit_scope = selectors.reviewable_tenant_ids(request.user)
    return request._audit_scope


class CappedCountPaginator(Paginator):
    """Counts at most ``limit`` rows (a LIMITed subquery), never the whole table.
    ``capped`` says the true count is larger."""

    def __init__(self, object_list, per_page, *, limit: int, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        self.limit = limit

    @cached_property
    def count(self):
        return self.object_list[: self.limit].count()

    @property
    def capped(self) -> bool:
        return self.count >= self.limit


class DateRangeFilter(admin.ListFilter):
    """From / to dates (UTC, both inclusive) as two date inputs."""

    title = _("date range (UTC)")
    template = "admin/audit/date_range_filter.html"
    parameters = ("occurred_from", "occurred_to")

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.values = {}
        for name in self.parameters:
            if name in params:
                value = params.pop(name)
                value = value[-1] if isinstance(value, list) else value
                if value:
                    self.values[name] = value
                    self.used_parameters[name] = value
        self.request_params = {k: v for k, v in request.GET.lists() if k not in self.parameters and k != "p"}

    def has_output(self):
        return True

    def expected_parameters(self):
        return list(self.parameters)

    def _date(self, name):
        try:
            return dt.date.fromisoformat(self.values[name])
        except ValueError:
            raise IncorrectLookupParameters(f"{name} must be a date YYYY-MM-DD") from None

    def queryset(self, request, queryset):
        if "occurred_from" in self.values:
            start = dt.datetime.combine(self._date("occurred_from"), dt.time.min, tzinfo=dt.timezone.utc)
            queryset = queryset.filter(occurred_at__gte=start)
        if "occurred_to" in self.values:
            end = dt.datetime.combine(self._date("occurred_to") + dt.timedelta(days=1), dt.time.min,
                                      tzinfo=dt.timezone.utc)
            queryset = queryset.filter(occurred_at__lt=end)
        return queryset

    def choices(self, changelist):
        yield {
            "from": self.values.get("occurred_from", ""),
            "to": self.values.get("occurred_to", ""),
            "hidden": [(k, v) for k, values in self.request_params.items() for v in values],
            "clear_url": changelist.get_query_string(remove=list(self.parameters) + ["p"]),
        }


class ScopedChoicesFilter(admin.SimpleListFilter):
    """Choices drawn from the reviewable tenants' events only."""

    column = ""

    def lookups(self, request, model_admin):
        raise NotImplementedError

    def queryset(self, request, queryset):
        value = self.value()
        if value in (None, ""):
            return queryset
        if self.column in ("user_id", "kb_id", "tenant_id"):
            try:
                value = int(value)
            except ValueError:
                raise IncorrectLookupParameters(f"{self.parameter_name} must be a number") from None
        return queryset.filter(**{self.column: value})


class OrganisationFilter(ScopedChoicesFilter):
    """Shown to those who review more than one organisation (and superusers):
    the way to narrow the list, and the export, to one chain."""

    title, parameter_name, column = _("organisation"), "organisation", "tenant_id"

    def lookups(self, request, model_admin):
        tenants = selectors.reviewable_tenants(request.user)
        return [(str(t.pk), t.name) for t in tenants] if len(tenants) > 1 else []


class ReviewEventsFilter(admin.SimpleListFilter):
    """The officers' own reading of the log (audit.view) swamps the list: it is
    hidden unless asked for, or unless the action filter names it. It stays in
    the chain, the export of a whole range, the API and audit_verify."""

    title, parameter_name = _("reviews of the audit log"), "reviews"

    def lookups(self, request, model_admin):
        return [("shown", _("shown"))]

    def queryset(self, request, queryset):
        if self.value() == "shown" or request.GET.get("action") in selectors.REVIEW_ACTIONS:
            return queryset
        return selectors.without_review_events(queryset)

    def choices(self, changelist):
        shown = self.value() == "shown"
        yield {"selected": not shown, "query_string": changelist.get_query_string(remove=[self.parameter_name]),
               "display": _("hidden")}
        yield {"selected": shown, "query_string": changelist.get_query_string({self.parameter_name: "shown"}),
               "display": _("shown")}


class ActionFilter(ScopedChoicesFilter):
    title, parameter_name, column = _("action"), "action", "action"

    def lookups(self, request, model_admin):
        return selectors.action_choices(request.user)


class UserFilter(ScopedChoicesFilter):
    title, parameter_name, column = _("user"), "user", "user_id"

    def lookups(self, request, model_admin):
        return selectors.user_choices(request.user)


class KnowledgeBaseFilter(ScopedChoicesFilter):
    title, parameter_name, column = _("knowledge base"), "kb", "kb_id"

    def lookups(self, request, model_admin):
        return selectors.kb_choices(request.user)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["time", "user", "action", "outcome", "short_query", "score", "latency"]
    list_display_links = ["time"]
    sortable_by = ["time"]
    list_filter = [OrganisationFilter, DateRangeFilter, ActionFilter, "outcome", UserFilter, KnowledgeBaseFilter,
                   ReviewEventsFilter]
    search_fields = ["query", "username", "client_ip", "request_id"]
    search_help_text = _("Query text, username, IP address or request id")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    list_max_show_all = 200
    actions = ["export_signed_bundle"]
    fieldsets = [
        # time, score and latency as in the list: seconds and ms in UTC, rounded figures, not raw floats.
        (_("Event"), {"fields": ["tenant", "chain", "seq", "time", "action", "outcome"]}),
        (_("Who"), {"fields": ["user_id", "username", "auth_method", "token_id", "client_ip", "user_agent",
                               "session_digest", "request_id"]}),
        (_("What"), {"fields": ["resource_type", "resource_id", "query", "kb_id", "kb_name", "kb_lines",
                                "result_count", "score", "latency", "model_id", "detail"]}),
        (_("Integrity"), {"fields": ["hmac_status", "link_status", "key_id", "prev_hash", "mac"]}),
    ]
    readonly_fields = ["time", "score", "latency", "hmac_status", "link_status"]

    # --- scope and permissions ------------------------------------------------
    def get_queryset(self, request):
        ids = _scope(request)
        events = AuditEvent.objects.all() if ids is None else AuditEvent.objects.filter(tenant_id__in=ids)
        return events.order_by("-occurred_at", "-id")

    def has_module_permission(self, request):
        ids = _scope(request)
        return ids is None or bool(ids)

    def has_view_permission(self, request, obj=None):
        ids = _scope(request)
        if obj is None or ids is None:
            return ids is None or bool(ids)
        return obj.tenant_id in ids

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        try:
            page = max(1, int(request.GET.get("p", 1)))
        except ValueError:
            page = 1
        limit = (page + settings.AUDIT_ADMIN_COUNT_AHEAD_PAGES) * per_page + 1
        return CappedCountPaginator(queryset, per_page, limit=limit, orphans=orphans,
                                    allow_empty_first_page=allow_empty_first_page)

    def get_search_results(self, request, queryset, search_term):
        return selectors.search_events(queryset, search_term), False

    # --- columns and detail fields --------------------------------------------
    @admin.display(description=_("time (UTC)"), ordering="occurred_at")
    def time(self, event):
        return event.occurred_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.") + \
            f"{event.occurred_at.microsecond // 1000:03d}"

    @admin.display(description=_("user"))
    def user(self, event):
        return event.username or "—"

    @admin.display(description=_("query"))
    def short_query(self, event):
        if len(event.query) <= QUERY_PREVIEW:
            return event.query
        return event.query[:QUERY_PREVIEW] + "…"

    @admin.display(description=_("top score"), ordering="top_score")
    def score(self, event):
        return f"{event.top_score:.3f}" if event.top_score is not None else "—"

    @admin.display(description=_("latency (ms)"))
    def latency(self, event):
        return f"{event.latency_ms:.1f}" if event.latency_ms is not None else "—"

    @admin.display(description=_("HMAC"))
    def hmac_status(self, event):
        return self._integrity(event).mac_text

    @admin.display(description=_("link to the previous event"))
    def link_status(self, event):
        return self._integrity(event).link_text

    def _integrity(self, event):
        if getattr(event, "_integrity", None) is None:
            event._integrity = selectors.event_integrity(event)
        return event._integrity

    # --- every read is audited --------------------------------------------------
    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        if request.method == "GET" and response.status_code == 200:
            services.audit_view_record(
                user=request.user, tenants=self._scope_tenants(request), context=request_context(request),
                page="admin.list", detail={"params": {k: v[:200] for k, v in request.GET.items()}})
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and response.status_code == 200:
            event = self.get_object(request, object_id)
            services.audit_view_record(
                user=request.user, tenants=[event.tenant] if event.tenant_id else None,
                context=request_context(request), page="admin.detail",
                detail={"event_id": event.pk, "chain": event.chain, "seq": event.seq})
        return response

    def _scope_tenants(self, request):
        ids = _scope(request)
        return None if ids is None else selectors.reviewable_tenants(request.user)

    # --- export ------------------------------------------------------------------
    @admin.action(description=_("Export as a signed bundle"))
    def export_signed_bundle(self, request, queryset):
        chains = list(queryset.order_by().values_list("tenant_id", flat=True).distinct()[:2])
        if len(chains) != 1 or chains[0] is None:
            self.message_user(request, _("Export the events of one organisation at a time (filter by organisation first)."),
                              messages.ERROR)
            return None
        tenant = Tenant.objects.get(pk=chains[0])
        selected_all = request.POST.get("select_across") == "1"
        description = {"selection": {
            "filters": {k: v[:200] for k, v in request.GET.items()},
            "selected": "all matching the filters" if selected_all else "chosen events",
        }}
        out = tempfile.TemporaryFile()
        try:
            result = services.audit_export_write(
                out=out, tenant=tenant, user=request.user, context=request_context(request), kind="selection",
                events=queryset.filter(tenant=tenant), description=description, via="admin")
        except (SigningUnavailable, ExportError, EnvelopeError) as exc:
            out.close()
            self.message_user(request, str(exc), messages.ERROR)
            return None
        except BaseException:
            out.close()
            raise
        return bundle_response(out, tenant, result)
