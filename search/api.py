"""The search REST API. One class per operation; each resolves the acting
tenant's objects through the scoped selectors and calls a service."""
from __future__ import annotations

import base64

import numpy as np
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from django.core.exceptions import RequestDataTooBig
from rest_framework.exceptions import ParseError, UnsupportedMediaType, ValidationError
from django.urls import reverse
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from audit.ledger.services import AuditUnavailable
from portal.api_base import TenantApiView
from portal.api_errors import Problem
from portal.scope import Scope, record_denial
from search import selectors, services
from search.failures import failure_status
from search.models import ImportJob, KnowledgeBase


class StrictCharField(serializers.CharField):
    """A string, not a number DRF would quietly turn into one."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number, not a string or a boolean DRF would quietly turn into one."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class SearchApiView(TenantApiView):
    # Base of every search API view (a capability per method: portal.api_base),
    # with domain errors as problem+json. (A comment, not a docstring:
    # docstrings become the public API description.)

    # (audit action, resource type) of a POST whose body is refused before
    # any service sees it (malformed JSON, wrong types, too large): recorded
    # with outcome "rejected" like the refusals the services record.
    refusal: tuple[str, str] | None = None

    def handle_exception(self, exc):
        if self.refusal and self.request.method == "POST" and isinstance(exc, _BODY_REFUSALS):
            exc = self._record_body_refusal(exc)
        return super().handle_exception(_as_problem(exc))

    def _record_body_refusal(self, exc):
        action, resource_type = self.refusal
        if isinstance(exc, ValidationError) and isinstance(exc.detail, dict):
            code, reason = "invalid_request", "invalid request fields: " + ", ".join(sorted(map(str, exc.detail)))
        elif isinstance(exc, RequestDataTooBig):
            code, reason = "DATA_UPLOAD_MAX_MEMORY_SIZE", "the request body is too large"
        else:
            code, reason = "invalid_request", f"the request body was refused ({exc.__class__.__name__})"
        kb_id = self.kwargs.get("kb_id")
        try:
            services.record_refusal(self.scope, action, services.SearchInputError(reason, code=code),
                                    resource_type=resource_type, resource_id=str(kb_id or ""))
        except AuditUnavailable as unavailable:
            return unavailable
        return exc

    def validated(self, serializer_class):
        if not isinstance(self.request.data, dict):
            raise ParseError("the request body must be a JSON object")
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


_BODY_REFUSALS = (ValidationError, ParseError, UnsupportedMediaType, RequestDataTooBig)


def _as_problem(exc):
    known = failure_status(exc)
    if known is None:
        return exc
    status, message = known
    if isinstance(exc, services.LimitExceeded):
        return Problem(status, message, limit=exc.limit)
    return Problem(status, message)


def kb_from_reference(scope: Scope, reference) -> KnowledgeBase:
    """A knowledge base of the acting tenant by id or by name; 404 otherwise."""
    kb = selectors.kb_by_reference(scope, reference)
    if kb is None:
        record_denial(scope, action="access.not_found", resource_type="search.knowledgebase",
                      resource_id=str(reference))
        raise Problem(404, f"knowledge base {reference!r} not found")
    return kb


class ResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()
    score = serializers.FloatField()
    weak = serializers.BooleanField(help_text="the score is under min_score: a weak match, not an answer")


class ServedModelSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="the served model's name")
    languages = serializers.ListField(child=serializers.CharField(), help_text=(
        "ISO 639-1 codes of the languages the model reads, from its sealed bundle; empty when not stated"))
    relevance_floor = serializers.FloatField(allow_null=True, help_text=(
        "the model's calibrated relevance floor; null when the bundle has none"))


class QueryWarningSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=["query_script_not_read"])
    message = serializers.CharField()
    scripts = serializers.ListField(child=serializers.CharField(), help_text="the query's scripts the model does "
                                    "not read (Unicode script names: Han, Cyrillic, Arabic, ...)")
    languages = serializers.ListField(child=serializers.CharField(), help_text="the languages the model reads")


class SearchOutputSerializer(serializers.Serializer):
    results = ResultSerializer(many=True)
    latency_ms = serializers.FloatField()
    request_id = serializers.CharField()
    model = ServedModelSerializer()
    min_score = serializers.FloatField(allow_null=True, help_text=(
        "the relevance floor applied: the knowledge base's own, else the model's calibrated one; "
        "null when there is none and no hit is weak"))
    query_truncated = serializers.BooleanField()
    warnings = QueryWarningSerializer(many=True, help_text="reasons to doubt the results; the search still ran")


def search_response(scope: Scope, result: services.SearchResult) -> Response:
    # The shape SearchOutputSerializer documents, built directly: running the
    # serializer over values the service already typed only cost time.
    return Response({
        "results": [{"id": h.id, "text": h.text, "score": round(h.score, 6), "weak": h.weak} for h in result.hits],
        "latency_ms": round(result.latency_ms, 3),
        "request_id": scope.request_id,
        "model": result.model.as_dict(),
        "min_score": result.min_score,
        "query_truncated": result.query_truncated,
        "warnings": [w.as_dict() for w in result.warnings],
    })


class SearchApi(SearchApiView):
    capabilities = {"POST": "search"}
    extra_problem_statuses = [409]  # services.ModelMismatch (portal.openapi)
    refusal = ("search.failed", "knowledge_base")

    class SearchInputSerializer(serializers.Serializer):
        kb = serializers.JSONField(help_text="knowledge base id (integer) or name")
        query = StrictCharField(allow_blank=True, trim_whitespace=False)
        top_k = StrictIntegerField(required=False, default=5)

    @extend_schema(summary="Search a knowledge base", tags=["search"], request=SearchInputSerializer,
                   responses=SearchOutputSerializer, examples=[OpenApiExample(
                       "by name", request_only=True, value={"kb": "FAQ", "query": "reset my password", "top_k": 3})])
    def post(self, request):
        data = self.validated(self.SearchInputSerializer)
        if not isinstance(data["kb"], (int, str)) or isinstance(data["kb"], bool):
            raise Problem(400, "kb must be a knowledge base id or name")
        if isinstance(data["kb"], str) and "\x00" in data["kb"]:  # no name has one; PostgreSQL cannot compare it
            raise Problem(400, "kb must be a knowledge base id or name: a name has no NUL character")
        kb = kb_from_reference(self.scope, data["kb"])
        result = services.search_kb(scope=self.scope, kb=kb, query=data["query"], top_k=data["top_k"])
        return search_response(self.scope, result)


class RadarApi(SearchApiView):
    capabilities = {"POST": "search"}
    refusal = ("radar.failed", "radar")

    class RadarInputSerializer(serializers.Serializer):
        documents = serializers.ListField(child=StrictCharField(allow_blank=True, trim_whitespace=False))
        query = StrictCharField(allow_blank=True, trim_whitespace=False)
        top_k = StrictIntegerField(required=False, default=5)

    @extend_schema(summary="Search pasted lines without storing them (semantic radar)", tags=["search"],
                   request=RadarInputSerializer, responses=SearchOutputSerializer, examples=[OpenApiExample(
                       "two lines", request_only=True, value={
                           "documents": ["reset a password", "renew the VPN token"], "query": "password",
                           "top_k": 1})])
    def post(self, request):
        data = self.validated(self.RadarInputSerializer)
        result = services.radar_search(scope=self.scope, documents=data["documents"], query=data["query"],
                                       top_k=data["top_k"])
        return search_response(self.scope, result)


class KbOutputSerializer(serializers.ModelSerializer):
    line_count = serializers.IntegerField(read_only=True, default=None, allow_null=True)

    class Meta:
        model = KnowledgeBase
        fields = ["id", "name", "description", "model_id", "dimensions", "min_score", "line_count", "created_at"]


class KbListApi(SearchApiView):
    capabilities = {"GET": "kb.read", "POST": "kb.manage"}

    class KbCreateInputSerializer(serializers.Serializer):
        name = StrictCharField(max_length=200)
        description = StrictCharField(max_length=500, required=False, default="", allow_blank=True)
        min_score = StrictFloatField(required=False, allow_null=True, default=None, min_value=0.0,
                                           max_value=1.0, help_text=(
                                               "relevance floor (cosine 0..1): hits under it are weak matches; "
                                               "null or absent: the served model's calibrated default"))

    @extend_schema(summary="List knowledge bases", tags=["knowledge bases"], operation_id="api_v1_kbs_list",
                   responses=inline_serializer("KbList", {"results": KbOutputSerializer(many=True)}))
    def get(self, request):
        return Response({"results": KbOutputSerializer(selectors.kb_list(self.scope), many=True).data})

    @extend_schema(summary="Create a knowledge base", tags=["knowledge bases"], request=KbCreateInputSerializer,
                   responses={201: KbOutputSerializer}, examples=[OpenApiExample(
                       "handbook", request_only=True, value={"name": "Handbook", "description": "HR questions"})])
    def post(self, request):
        data = self.validated(self.KbCreateInputSerializer)
        kb = services.kb_create(scope=self.scope, name=data["name"], description=data["description"],
                                min_score=data["min_score"])
        return Response(KbOutputSerializer(kb).data, status=201)


class KbDetailApi(SearchApiView):
    capabilities = {"GET": "kb.read", "DELETE": "kb.manage"}

    @extend_schema(summary="Get a knowledge base", tags=["knowledge bases"], responses=KbOutputSerializer)
    def get(self, request, kb_id: int):
        kb = selectors.kb_list(self.scope).filter(pk=kb_id).first()
        if kb is None:
            raise Problem(404, f"knowledge base {kb_id} not found")
        return Response(KbOutputSerializer(kb).data)

    @extend_schema(summary="Delete a knowledge base and its documents", tags=["knowledge bases"],
                   responses={204: None})
    def delete(self, request, kb_id: int):
        services.kb_delete(scope=self.scope, kb=kb_from_reference(self.scope, kb_id))
        return Response(status=204)


class DocumentPagination(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


class DocumentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()
    source_line = serializers.IntegerField(allow_null=True)
    digest = serializers.CharField()
    created_at = serializers.DateTimeField()


class DocumentsAddedSerializer(serializers.Serializer):
    added = serializers.IntegerField()
    skipped_duplicates = serializers.IntegerField()
    truncated = serializers.IntegerField()
    kb = serializers.IntegerField()


class DocumentListApi(SearchApiView):
    capabilities = {"GET": "kb.read", "POST": "kb.manage"}
    pagination_class = DocumentPagination  # what the schema documents; get() pages with it
    extra_problem_statuses = {"POST": [409]}  # services.ModelMismatch (portal.openapi)
    refusal = ("doc.import", "knowledge_base")

    class DocumentsAddInputSerializer(serializers.Serializer):
        documents = serializers.ListField(child=serializers.JSONField(), allow_empty=False,
                                          help_text='strings, or objects {"text": ...}')

    @extend_schema(summary="List a knowledge base's documents, a page at a time", tags=["documents"],
                   responses=DocumentOutputSerializer(many=True), parameters=[
        OpenApiParameter("limit", int, description="page size (default 100, at most 1000)"),
        OpenApiParameter("offset", int)])
    def get(self, request, kb_id: int):
        kb = kb_from_reference(self.scope, kb_id)
        paginator = DocumentPagination()
        page = paginator.paginate_queryset(selectors.document_list(self.scope, kb), request, view=self)
        return paginator.get_paginated_response(DocumentOutputSerializer(page, many=True).data)

    @extend_schema(summary="Add documents to a knowledge base (bulk)", tags=["documents"],
                   request=DocumentsAddInputSerializer, responses={201: DocumentsAddedSerializer},
                   examples=[OpenApiExample("a string and an object", request_only=True, value={
                       "documents": ["Lunch is served at noon.", {"text": "The lobby opens at seven."}]})])
    def post(self, request, kb_id: int):
        kb = kb_from_reference(self.scope, kb_id)
        data = self.validated(self.DocumentsAddInputSerializer)
        result = services.documents_add(scope=self.scope, kb=kb, items=data["documents"], source="api")
        return Response({"added": result.added, "skipped_duplicates": result.skipped,
                         "truncated": result.truncated, "kb": kb.pk}, status=201)


class DocumentDetailApi(SearchApiView):
    capabilities = {"DELETE": "kb.manage"}

    @extend_schema(summary="Delete a document", tags=["documents"], responses={204: None})
    def delete(self, request, kb_id: int, doc_id: int):
        kb = kb_from_reference(self.scope, kb_id)
        document = selectors.document_get(self.scope, kb, doc_id)
        services.document_delete(scope=self.scope, document=document)
        return Response(status=204)


class ImportJobSerializer(serializers.ModelSerializer):
    kb = serializers.IntegerField(source="knowledge_base_id", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = ImportJob
        fields = ["id", "url", "kb", "status", "source_name", "format", "total", "done", "added",
                  "skipped_duplicates", "truncated", "error", "created_at", "started_at", "finished_at"]
        read_only_fields = fields

    def get_url(self, job) -> str:
        return reverse("api-import", kwargs={"job_id": job.pk})


class ImportListApi(SearchApiView):
    # A file import queued for the task worker: 202 and the job's address at
    # once, the file checked first (a refused one answers 4xx and queues nothing).
    capabilities = {"POST": "kb.manage"}
    parser_classes = [MultiPartParser]
    extra_problem_statuses = {"POST": [413]}
    refusal = ("doc.import", "knowledge_base")

    @extend_schema(summary="Import a file into a knowledge base, in the background", tags=["documents"],
                   request={"multipart/form-data": inline_serializer("ImportFileInput", fields={
                       "file": serializers.FileField(help_text="text (an entry a line), .csv or .jsonl"),
                       "format": serializers.ChoiceField(["txt", "csv", "jsonl"], required=False,
                                                         help_text="default: from the file name")})},
                   responses={202: ImportJobSerializer})
    def post(self, request, kb_id: int):
        kb = kb_from_reference(self.scope, kb_id)
        upload = request.FILES.get("file")
        fmt = request.data.get("format") or None
        if fmt not in (None, "txt", "csv", "jsonl"):
            raise ValidationError({"format": ["one of txt, csv, jsonl"]})
        job = services.import_job_submit(scope=self.scope, kb=kb, name=upload.name if upload else "",
                                         file=upload, size=upload.size if upload else 0, fmt=fmt)
        body = ImportJobSerializer(job).data
        return Response(body, status=202, headers={"Location": body["url"]})


class ImportDetailApi(SearchApiView):
    capabilities = {"GET": "kb.read"}

    @extend_schema(summary="An import job: its status and progress", tags=["documents"],
                   responses=ImportJobSerializer)
    def get(self, request, job_id: int):
        job = selectors.import_job_get(self.scope, job_id)
        services.import_jobs_fail_lost([job])
        return Response(ImportJobSerializer(job).data)


class EmbeddingItemSerializer(serializers.Serializer):
    object = serializers.CharField(default="embedding")
    index = serializers.IntegerField()
    embedding = serializers.JSONField(help_text="list of floats, or base64 of little-endian float32")


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class EmbeddingsOutputSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = EmbeddingItemSerializer(many=True)
    model = serializers.CharField()
    usage = UsageSerializer()
    truncated = serializers.ListField(child=serializers.IntegerField(), required=False,
                                      help_text="indices of inputs cut to the model's limit")


class EmbeddingsApi(SearchApiView):
    """OpenAI-compatible embeddings: a string or a list of strings in, vectors out."""

    capabilities = {"POST": "search"}
    refusal = ("embeddings.create", "embeddings")

    class EmbeddingsInputSerializer(serializers.Serializer):
        input = serializers.JSONField(help_text="a string or a list of strings")
        model = serializers.CharField(required=False, allow_blank=True)
        dimensions = StrictIntegerField(required=False, allow_null=True, default=None)
        encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False, default="float")
        user = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(summary="Create embeddings (the OpenAI embeddings API)", tags=["embeddings"],
                   request=EmbeddingsInputSerializer, responses=EmbeddingsOutputSerializer,
                   examples=[OpenApiExample("two inputs, 64 dimensions", request_only=True, value={
                       "input": ["a printer", "a VPN token"], "dimensions": 64})])
    def post(self, request):
        data = self.validated(self.EmbeddingsInputSerializer)
        result, engine = services.embeddings_create(scope=self.scope, inputs=data["input"],
                                                    dimensions=data["dimensions"])
        items = []
        for index, vector in enumerate(result.vectors):
            if data["encoding_format"] == "base64":
                encoded = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            else:
                encoded = [float(x) for x in vector]
            items.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(result.token_counts)
        body = {"object": "list", "data": items, "model": engine.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        if any(result.truncated):
            body["truncated"] = [i for i, cut in enumerate(result.truncated) if cut]
        return Response(body)
