"""The append-only audit event. Each row is MAC'd over every field and linked to
the previous row of its chain (one chain per tenant, chain 0 for the platform)."""
from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

PLATFORM_CHAIN = 0
GENESIS_HASH = "0" * 64


class Outcome(models.TextChoices):
    SUCCESS = "success", _("success")
    FAILURE = "failure", _("failure")
    DENIED = "denied", _("denied")
    REJECTED = "rejected", _("rejected")


class AuditEventImmutable(Exception):
    """Audit events are never changed or deleted through the ORM."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AuditEventImmutable("audit events cannot be updated")

    def delete(self):
        raise AuditEventImmutable("audit events cannot be deleted")

    def bulk_update(self, *args, **kwargs):
        raise AuditEventImmutable("audit events cannot be updated")

    def for_tenant(self, tenant):
        if tenant is None:
            return self.none()
        return self.filter(tenant=tenant)


class AuditEvent(models.Model):
    chain = models.PositiveIntegerField(_("chain"), help_text=_("organisation id, or 0 for the platform chain"))
    seq = models.PositiveBigIntegerField(_("sequence number"))
    # No index of its own: every (tenant, …) index below serves tenant lookups.
    tenant = models.ForeignKey(settings.AUDIT_TENANT_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                               related_name="+", db_index=False, verbose_name=_("organisation"))
    occurred_at = models.DateTimeField(_("time (UTC)"))
    action = models.CharField(_("action"), max_length=64)
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices)
    user_id = models.BigIntegerField(_("user id"), null=True, blank=True)
    username = models.CharField(_("username"), max_length=150, blank=True)
    auth_method = models.CharField(_("signed in with"), max_length=16, blank=True)
    token_id = models.BigIntegerField(_("token id"), null=True, blank=True)
    client_ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    user_agent = models.CharField(_("browser or program"), max_length=512, blank=True)
    session_digest = models.CharField(_("session digest"), max_length=64, blank=True)
    request_id = models.CharField(_("request id"), max_length=64, blank=True)
    resource_type = models.CharField(_("resource type"), max_length=64, blank=True)
    resource_id = models.CharField(_("resource id"), max_length=128, blank=True)
    query = models.TextField(_("query"), blank=True)
    kb_id = models.BigIntegerField(_("knowledge base id"), null=True, blank=True)
    kb_name = models.CharField(_("knowledge base"), max_length=200, blank=True)
    kb_lines = models.IntegerField(_("entries in the knowledge base"), null=True, blank=True)
    result_count = models.IntegerField(_("results"), null=True, blank=True)
    top_score = models.FloatField(_("top score"), null=True, blank=True)
    latency_ms = models.FloatField(_("latency (ms)"), null=True, blank=True)
    model_id = models.CharField(_("model"), max_length=200, blank=True)
    detail = models.JSONField(_("detail"), default=dict, blank=True)
    key_id = models.CharField(_("key id"), max_length=32)
    prev_hash = models.CharField(_("previous event's HMAC"), max_length=64)
    mac = models.CharField(_("HMAC"), max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq_unique")]
        indexes = [
            models.Index(fields=["tenant", "-occurred_at"], name="audit_tenant_time"),
            models.Index(fields=["tenant", "action", "-occurred_at"], name="audit_tenant_action_time"),
            models.Index(fields=["tenant", "user_id", "-occurred_at"], name="audit_tenant_user_time"),
            # The admin's and the API's filters (SPEC §8; bench/audit_admin.py).
            models.Index(fields=["tenant", "outcome", "-occurred_at"], name="audit_tenant_outcome_time"),
            models.Index(fields=["tenant", "kb_id", "-occurred_at"], name="audit_tenant_kb_time"),
            models.Index(fields=["tenant", "request_id"], name="audit_tenant_request"),
            models.Index(fields=["tenant", "client_ip"], name="audit_tenant_ip"),
        ]
        ordering = ["-occurred_at", "-id"]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")

    def __str__(self):
        return f"{self.chain}#{self.seq} {self.action} {self.outcome}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AuditEventImmutable("audit events cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditEventImmutable("audit events cannot be deleted")


class AuditCheckpoint(models.Model):
    """A signed statement "chain C had head seq S with hash H at time T".

    ``payload`` is the exact JSON that was signed (Ed25519); the other columns
    repeat it for querying. Kept outside the event chain so that writing one
    never changes the chain it describes."""

    chain = models.PositiveIntegerField()
    tenant = models.ForeignKey(settings.AUDIT_TENANT_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                               related_name="+")
    seq = models.PositiveBigIntegerField()
    head_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    payload = models.TextField()
    signature = models.CharField(max_length=128, help_text="Ed25519 signature of payload, standard base64")
    signing_key_id = models.CharField(max_length=32)

    class Meta:
        indexes = [models.Index(fields=["chain", "-seq"], name="audit_checkpoint_chain_seq")]
        ordering = ["chain", "-seq"]

    def __str__(self):
        return f"checkpoint {self.chain}#{self.seq}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AuditEventImmutable("checkpoints cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditEventImmutable("checkpoints cannot be deleted")


class ArchiveAuthorisation(models.Model):
    """While a row exists, the database lets events of ``chain`` with
    ``seq <= through_seq`` be deleted (the one sanctioned DELETE, see
    migration 0004). ``audit.ledger.retention.archive_chain`` writes it and removes it
    in the same transaction; nothing else may."""

    chain = models.PositiveIntegerField()
    through_seq = models.PositiveBigIntegerField()
    created_at = models.DateTimeField()



class ExportJob(models.Model):
    """A range export written by the task worker (``manage.py db_worker``):
    who asked, how far it got, and where the finished bundle waits to be
    downloaded (a file under AUDIT_EXPORT_DIR, removed AUDIT_EXPORT_KEEP_HOURS
    after it was written). Not an audit record: the ``audit.export*`` events
    are the record; this row is the job's working state."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")

    tenant = models.ForeignKey(settings.AUDIT_TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    range_from = models.DateTimeField()
    range_to = models.DateTimeField()
    recipient = models.CharField(max_length=200, blank=True, help_text="auditor's X25519 public key, if sealed")
    context = models.JSONField(default=dict, help_text="the submitting request's audit context")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0, help_text="events in the range when it was asked for")
    done = models.PositiveIntegerField(default=0, help_text="events written so far")
    file_name = models.CharField(max_length=100, blank=True, help_text="the bundle under AUDIT_EXPORT_DIR")
    bundle_sha256 = models.CharField(max_length=64, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["tenant", "-id"], name="audit_export_job_tenant")]

    def __str__(self):
        return f"export {self.pk} ({self.status})"

# The fields covered by the MAC, in the canonical serialisation. Every column
# except the surrogate id and the MAC itself.
MAC_FIELDS = tuple(
    f.attname for f in AuditEvent._meta.concrete_fields if f.attname not in ("id", "mac")
)
