import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from pgvector.django import VectorField

from portal.models import Tenant, TenantScopedQuerySet


def new_revision() -> str:
    return uuid.uuid4().hex


class KnowledgeBase(models.Model):
    """A tenant's collection of documents, embedded with one model at one size."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="knowledge_bases")
    name = models.CharField(max_length=200)
    description = models.CharField(max_length=500, blank=True)
    model_id = models.CharField(max_length=200, blank=True, help_text="set by the first import; never mixed")
    dimensions = models.PositiveIntegerField(null=True, blank=True)
    min_score = models.FloatField(null=True, blank=True,
                                  help_text="relevance floor: hits below it are weak matches; "
                                            "empty means the served model's calibrated default")
    revision = models.CharField(max_length=32, default=new_revision,
                                help_text="replaced on every change; caches keyed by it never serve stale rows")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="kb_name_unique_in_tenant")]
        ordering = ["name"]

    def __str__(self):
        return self.name


class Document(models.Model):
    """One entry of a knowledge base, with its embedding computed once at import."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="documents")
    text = models.TextField()
    source_line = models.PositiveIntegerField(null=True, blank=True, help_text="line or record number in the import")
    source_name = models.CharField(max_length=200, blank=True, help_text="file (or API call) the entry came from")
    digest = models.CharField(max_length=64, help_text="SHA-256 of the text; duplicates are skipped")
    # The embedding, L2-normalised, in one of two places by database (search.index):
    # SQLite keeps float32 bytes for the workers' numpy index; PostgreSQL keeps
    # a pgvector ``vector`` that its HNSW index and exact scans read in place.
    embedding = models.BinaryField(null=True, help_text="SQLite: float32 little-endian, L2-normalised")
    vector = VectorField(null=True, blank=True, help_text="PostgreSQL: the embedding as a pgvector vector")
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["knowledge_base", "digest"], name="doc_digest_unique_in_kb")]
        ordering = ["id"]

    def __str__(self):
        return self.text[:60]


class ImportJob(models.Model):
    """A file import run by the task worker (``manage.py db_worker``): what was
    sent, how far it got and how it ended. The file's bytes are kept only
    until it ends; ``context`` holds the submitting request's facts, so the
    records the worker writes say who asked and from where."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="import_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    source_name = models.CharField(max_length=200, blank=True)
    format = models.CharField(max_length=8)
    payload = models.BinaryField(null=True, help_text="the file, until the import ends")
    context = models.JSONField(default=dict, help_text="the submitting request's audit context")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0, help_text="entries in the file")
    done = models.PositiveIntegerField(default=0, help_text="entries embedded so far")
    added = models.PositiveIntegerField(null=True, blank=True)
    skipped_duplicates = models.PositiveIntegerField(null=True, blank=True)
    truncated = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True,
                                        help_text="when the worker last reported (claim, then each batch)")
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["tenant", "knowledge_base", "-id"], name="import_job_tenant_kb")]

    def __str__(self):
        return f"import {self.pk} ({self.status})"
