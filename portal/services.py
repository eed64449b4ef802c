"""Writes of the portal app: tenants, memberships, tokens. Each records its audit event."""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets

from django.db import DatabaseError, transaction
from django.utils import timezone

from audit.ledger.models import Outcome
from audit.ledger.services import record_event
from portal.models import ApiToken, Membership, Tenant
from portal.rows import column_values, row_get_related
from portal.storage import short_busy_timeout

logger = logging.getLogger(__name__)
TOKEN_PREFIX = "sp_"
# A token's last_used_at is bookkeeping: it waits this long for the write lock, then is skipped.
LAST_USED_BUSY_TIMEOUT_MS = 200
MAX_TOKEN_DAYS = 3650


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tenant_create(*, slug: str, name: str) -> Tenant:
    tenant, _ = Tenant.objects.get_or_create(slug=slug, defaults={"name": name})
    return tenant


def membership_grant(*, user, tenant: Tenant, role: str) -> Membership:
    membership, _ = Membership.objects.get_or_create(user=user, tenant=tenant, role=role)
    return membership


def login_failure_record(*, username: str, locked_out: bool, context: dict) -> None:
    """Audit a failed login in the chain of each organisation the named account
    belongs to, so its compliance officers see attempts on their people (user
    id = that account); in the platform chain when the name matches no member.
    The same single query runs whether or not the account exists."""
    username = username[:150]
    memberships = list(Membership.objects.filter(user__username=username).select_related("tenant")
                       .order_by("tenant__slug"))
    tenants = list({m.tenant_id: m.tenant for m in memberships}.values()) or [None]
    for tenant in tenants:
        record_event(action="auth.login_failed", outcome=Outcome.DENIED if locked_out else Outcome.FAILURE,
                     tenant=tenant, context=context, username=username,
                     user_id=memberships[0].user_id if memberships else None, detail={"locked_out": locked_out})


def token_create(*, user, tenant: Tenant, days: int, label: str = "", context: dict | None = None
                 ) -> tuple[ApiToken, str]:
    """A new token for ``user`` in ``tenant``. Returns the row and the token text,
    which exists nowhere else: only its digest is stored."""
    if not Membership.objects.filter(user=user, tenant=tenant).exists():
        raise ValueError(f"{user.get_username()} is not a member of {tenant.slug}")
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_TOKEN_DAYS}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        row = ApiToken.objects.create(
            tenant=tenant, user=user, label=label[:100], digest=token_digest(token),
            prefix=token[:10], expires_at=timezone.now() + dt.timedelta(days=days),
        )
        record_event(action="token.create", tenant=tenant, user=user, context=context,
                     resource_type="api_token", resource_id=str(row.pk),
                     detail={"label": row.label, "expires_at": row.expires_at.isoformat(), "prefix": row.prefix})
    return row, token


def token_revoke(*, token: ApiToken, by_user, context: dict | None = None) -> ApiToken:
    with transaction.atomic():
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
        record_event(action="token.revoke", tenant=token.tenant, user=by_user, context=context,
                     resource_type="api_token", resource_id=str(token.pk),
                     detail={"owner": token.user.get_username(), "prefix": token.prefix})
    return token


def token_authenticate(token_text: str) -> tuple[ApiToken | None, str]:
    """The active token row for a presented token, or None and why not.

    Runs on every API request, so it reads in plain SQL (portal.rows): the
    token with its user and tenant, and the user's roles there."""
    row = row_get_related(ApiToken, ("user", "tenant"), digest=token_digest(token_text))
    if row is None:
        return None, "invalid token"
    if row.revoked_at is not None:
        return None, "token revoked"
    now = timezone.now()
    if row.expires_at <= now:
        return None, "token expired"
    user = row.user
    # The roles are read here once; the request reuses them for every capability check.
    row.roles = frozenset(column_values(Membership, "role", user_id=row.user_id, tenant_id=row.tenant_id))
    if not user.is_active or not row.roles:
        return None, "token's user is no longer a member of its tenant"
    if row.last_used_at is None or now - row.last_used_at > dt.timedelta(minutes=1):
        # At most one write a minute per token: the hot path stays read-only.
        # Best effort: a database that cannot be written (held locked, full)
        # neither fails nor holds up the request for this bookkeeping; what
        # the request then writes (its audit record) decides its answer.
        try:
            with short_busy_timeout(LAST_USED_BUSY_TIMEOUT_MS), transaction.atomic():
                ApiToken.objects.filter(tenant_id=row.tenant_id, pk=row.pk).update(last_used_at=now)
            row.last_used_at = now
        except DatabaseError as exc:
            logger.warning("token id %s: last_used_at not updated (%s)", row.pk, exc.__class__.__name__)
    return row, ""
