"""Audit API (SPEC §5): the compliance role of the acting tenant, else 404."""
from __future__ import annotations

import datetime as dt
import tempfile


from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.utils import (OpenApiExample, OpenApiParameter, extend_schema, extend_schema_serializer,
                                   inline_serializer)
from rest_framework import exceptions, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from audit.ledger import services
from audit.ledger.checkpoints import SigningUnavailable
from audit.ledger.export import ExportError, parse_bound, range_events
from audit.models import MAC_FIELDS, AuditEvent, ExportJob, Outcome
from audit.review.exports import ExportGone, export_job_open, export_job_submit, export_needs_job
from audit.review.presign import PresignInvalid, presign_check, presign_params, presign_query
from audit.review.selectors import event_list, export_job_get
from keystore.envelope import EnvelopeError
from portal.api_base import TenantApiView


class ServiceUnavailable(exceptions.APIException):
    status_code = 503
    default_detail = "The audit export is not available."


class NotReady(exceptions.APIException):
    status_code = 409
    default_detail = "The export has not finished."


class Gone(exceptions.APIException):
    status_code = 410
    default_detail = "The bundle is no longer kept."


# Examples of a range, so generated requests (schemathesis) reach the answers a valid range gets.
RANGE_EXAMPLES = {"from": [OpenApiExample("a day", value="2020-01-01")],
                  "to": [OpenApiExample("a later day", value="2030-12-31")]}


class AuditEventPagination(CursorPagination):
    ordering = "-seq"
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000


class AuditEventListApi(TenantApiView):
    capabilities = {"GET": "audit.review"}

    class FilterSerializer(serializers.Serializer):
        to = serializers.CharField(required=False, max_length=40)
        action = serializers.CharField(required=False, max_length=64)
        outcome = serializers.ChoiceField(required=False, choices=Outcome.choices)
        user_id = serializers.IntegerField(required=False)
        username = serializers.CharField(required=False, max_length=150)
        kb_id = serializers.IntegerField(required=False)
        request_id = serializers.CharField(required=False, max_length=64)
        client_ip = serializers.IPAddressField(required=False)
        q = serializers.CharField(required=False, max_length=500)

        def get_fields(self):
            fields = super().get_fields()
            fields["from"] = serializers.CharField(required=False, max_length=40)  # a keyword in Python
            return fields

        def validate(self, values):
            for name in ("from", "to"):
                try:
                    if values.get(name):
                        values[name] = parse_bound(values[name], name=name, end=name == "to")
                except ExportError as exc:
                    raise serializers.ValidationError({name: [str(exc)]}) from None
            return values

    @extend_schema_serializer(component_name="AuditEvent")
    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = AuditEvent
            fields = ["id", *MAC_FIELDS, "mac"]

    pagination_class = AuditEventPagination  # what the schema documents; get() pages with it

    @extend_schema(summary="List audit events (compliance role), newest first, a cursor page at a time",
                   tags=["audit"], parameters=[OpenApiParameter(name, str, required=False,
                                                                examples=RANGE_EXAMPLES.get(name)) for name in (
                       "from", "to", "action", "outcome", "user_id", "username", "kb_id", "request_id",
                       "client_ip", "q", "cursor", "limit")], responses=OutputSerializer(many=True))
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = AuditEventPagination()
        page = paginator.paginate_queryset(event_list(self.scope, filters=filters.validated_data), request, self)
        services.audit_view_record(
            user=self.scope.user, tenants=[self.scope.tenant], context=self.scope.context, page="api.events",
            detail={"filters": {k: str(v) for k, v in filters.validated_data.items()}, "shown": len(page)})
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


def bundle_response(out, tenant, result) -> FileResponse:
    out.seek(0)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    suffix = "zip.sealed" if result.sealed_to else "zip"
    response = FileResponse(out, as_attachment=True, filename=f"audit-{tenant.slug}-{stamp}.{suffix}",
                            content_type="application/octet-stream")
    response["X-Audit-Export-SHA256"] = result.bundle_sha256
    return response


@extend_schema_serializer(component_name="AuditExportJobInput")
class ExportRangeInputSerializer(serializers.Serializer):
    """The range (and the optional recipient key) of an export in a request body."""
    to = serializers.CharField(max_length=40)
    recipient = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.CharField(max_length=40)  # a keyword in Python
        return fields


def submit_response(scope, start_text: str, end_text: str, recipient: str) -> Response:
    try:
        job = export_job_submit(scope=scope, start_text=start_text, end_text=end_text, recipient=recipient)
    except (ExportError, EnvelopeError) as exc:
        raise exceptions.ValidationError({"detail": str(exc)}) from None
    except SigningUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None
    body = ExportJobSerializer(job).data
    return Response(body, status=202, headers={"Location": body["url"]})


@extend_schema_serializer(component_name="AuditExportJob")
class ExportJobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    download = serializers.SerializerMethodField(help_text="the bundle's address once it is written, else null")
    percent = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = ExportJob
        fields = ["id", "url", "status", "range_from", "range_to", "recipient", "total", "done", "percent",
                  "bundle_sha256", "download", "error", "created_by", "created_at", "started_at", "finished_at"]
        read_only_fields = fields

    def get_url(self, job) -> str:
        return reverse("api-audit-export-job", kwargs={"job_id": job.pk})

    def get_download(self, job) -> str | None:
        if job.status != ExportJob.Status.SUCCEEDED or not job.file_name:
            return None
        return reverse("api-audit-export-bundle", kwargs={"job_id": job.pk})

    def get_percent(self, job) -> int:
        if job.status == ExportJob.Status.SUCCEEDED:
            return 100
        return min(99, job.done * 100 // job.total) if job.total else 0

    def get_created_by(self, job) -> str:
        return job.created_by.get_username() if job.created_by else ""


class AuditExportApi(TenantApiView):
    """A range export: by the compliance role, or by a presigned URL (no login)."""

    permission_classes = [AllowAny]
    capabilities = {"GET": "audit.review"}  # unless the URL is presigned: its signature is the credential

    extra_problem_statuses = [403]  # a presigned URL that does not verify (portal.openapi)

    def needs_capability(self, request) -> bool:
        return "sig" not in request.query_params

    @extend_schema(summary="Download a signed audit export of a time range", tags=["audit"],
                   parameters=[OpenApiParameter(name, str, required=name in ("from", "to"),
                                                examples=RANGE_EXAMPLES.get(name)) for name in (
        "from", "to", "recipient", "tenant", "expires", "by", "sig")],
        responses={(200, "application/octet-stream"): bytes, 202: ExportJobSerializer})
    def get(self, request):
        context = self.scope.context
        if "sig" in request.query_params:
            try:
                grant = presign_check(request.query_params)
            except PresignInvalid as exc:
                services.audit_export_denied(tenant=None, user=None, context=context, via="presigned-url",
                                             reason=str(exc))
                raise exceptions.PermissionDenied(str(exc)) from None
            tenant, user, via = grant.tenant, grant.user, "presigned-url"
            start_text, end_text, recipient = grant.start_text, grant.end_text, grant.recipient
        else:
            tenant, user, via = self.scope.tenant, self.scope.user, "api"
            start_text, end_text = request.query_params.get("from", ""), request.query_params.get("to", "")
            recipient = request.query_params.get("recipient", "")
        if via == "api" and export_needs_job(tenant, start_text, end_text):
            return submit_response(self.scope, start_text, end_text, recipient)
        out = tempfile.TemporaryFile()
        try:
            start, end = parse_bound(start_text, name="from"), parse_bound(end_text, name="to", end=True)
            result = services.audit_export_write(
                out=out, tenant=tenant, user=user, context=context, kind="range",
                events=range_events(tenant, start, end), via=via, recipient=recipient or None,
                description={"range": {"from": start.isoformat(), "to": end.isoformat()}})
        except (ExportError, EnvelopeError) as exc:
            out.close()
            raise exceptions.ValidationError({"detail": str(exc)}) from None
        except SigningUnavailable as exc:
            out.close()
            raise ServiceUnavailable(str(exc)) from None
        except BaseException:
            out.close()
            raise
        return bundle_response(out, tenant, result)


class AuditExportJobListApi(TenantApiView):
    # A range export written in the background: 202 and the job's address.
    capabilities = {"POST": "audit.review"}

    InputSerializer = ExportRangeInputSerializer

    @extend_schema(summary="Export a time range in the background (202 and the job's address)", tags=["audit"],
                   request=InputSerializer, responses={202: ExportJobSerializer},
                   examples=[OpenApiExample("a decade", request_only=True,
                                            value={"from": "2020-01-01", "to": "2030-12-31"})])
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        return submit_response(self.scope, values["from"], values["to"], values["recipient"])


class AuditExportJobApi(TenantApiView):
    capabilities = {"GET": "audit.review"}

    @extend_schema(summary="A background export: its status and progress", tags=["audit"],
                   responses=ExportJobSerializer)
    def get(self, request, job_id: int):
        return Response(ExportJobSerializer(export_job_get(self.scope, job_id)).data)


class AuditExportJobBundleApi(TenantApiView):
    capabilities = {"GET": "audit.review"}
    extra_problem_statuses = [409, 410]

    @extend_schema(summary="Download the signed bundle of a finished background export", tags=["audit"],
                   responses={(200, "application/octet-stream"): bytes})
    def get(self, request, job_id: int):
        job = export_job_get(self.scope, job_id)
        if job.status in (ExportJob.Status.QUEUED, ExportJob.Status.RUNNING):
            raise NotReady()
        try:
            handle = export_job_open(scope=self.scope, job=job)
        except ExportGone as exc:
            raise Gone(f"No bundle to download: {exc}") from None
        response = FileResponse(handle, as_attachment=True, filename=job.file_name.rsplit("-", 1)[0] + (
            ".zip.sealed" if job.recipient else ".zip"), content_type="application/octet-stream")
        response["X-Audit-Export-SHA256"] = job.bundle_sha256
        return response


class AuditExportPresignApi(TenantApiView):
    capabilities = {"POST": "audit.review"}

    @extend_schema_serializer(component_name="AuditExportPresignInput")
    class InputSerializer(ExportRangeInputSerializer):
        expires_in = serializers.IntegerField(default=3600)

    @extend_schema(summary="Create a time-limited presigned export URL", tags=["audit"], request=InputSerializer,
                   responses=inline_serializer("AuditExportPresign", {
                       "url": serializers.URLField(), "expires": serializers.DateTimeField()}),
                   examples=[OpenApiExample("a decade", request_only=True, value={
                       "from": "2020-01-01", "to": "2030-12-31", "expires_in": 600})])
    def post(self, request):
        tenant = self.scope.tenant
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        try:
            if values["recipient"]:
                from keystore.envelope import parse_recipient_public_key

                parse_recipient_public_key(values["recipient"])
            params = presign_params(tenant=tenant, user=self.scope.user, start_text=values["from"],
                                    end_text=values["to"], recipient=values["recipient"],
                                    expires_in=values["expires_in"])
        except (ExportError, EnvelopeError) as exc:
            raise exceptions.ValidationError({"detail": str(exc)}) from None
        services.record_event(action="audit.presign", tenant=tenant, user=self.scope.user,
                              context=self.scope.context, resource_type="audit_export",
                              detail={"from": params["from"], "to": params["to"], "expires": params["expires"],
                                      "recipient": params["recipient"]})
        url = request.build_absolute_uri("/api/v1/audit/export") + "?" + presign_query(params)
        # The URL is a credential shown once: no browser or proxy may keep a copy.
        return Response({"url": url, "expires": dt.datetime.fromtimestamp(
            int(params["expires"]), dt.timezone.utc).isoformat()}, headers={"Cache-Control": "no-store"})
