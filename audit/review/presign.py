"""Presigned export URLs: a compliance officer hands a tool (or a colleague's
script) a URL that fetches one export, until it expires, without credentials.

    /api/v1/audit/export?tenant=acme&from=2026-01-01&to=2026-01-31&recipient=&expires=1767225600&by=7&sig=…

``sig`` is HMAC-SHA256, keyed by a subkey derived from the audit key
("export-presign"), over every other parameter in a fixed order; the
parameters must appear exactly once and no others may be added, so changing,
adding or repeating any of them invalidates the URL. ``by`` is the user who
made it: the URL stops working as soon as they lose the compliance role
(portal.grants: the roles that grant audit review, per CAPABILITIES).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model

from audit.ledger.export import ExportError, parse_bound
from keystore.keys import derive_subkey, get_keyring
from portal.grants import REVIEW_CAPABILITY, tenant_ids_granting
from portal.models import Tenant

SIGNED_PARAMS = ("tenant", "from", "to", "recipient", "expires", "by")
DOMAIN = "portal-audit-presign-v1"


class PresignInvalid(Exception):
    """The URL is not (or no longer) valid; the message says why."""


@dataclass
class PresignGrant:
    tenant: Tenant
    user: object
    start_text: str
    end_text: str
    recipient: str


@functools.lru_cache(maxsize=4)
def _presign_key(audit_key: bytes) -> bytes:
    return derive_subkey(audit_key, "export-presign")


def presign_signature(params: dict) -> str:
    message = "\n".join([DOMAIN] + [f"{name}={params[name]}" for name in SIGNED_PARAMS]).encode()
    return hmac.new(_presign_key(get_keyring().audit_key), message, hashlib.sha256).hexdigest()


def presign_params(*, tenant, user, start_text: str, end_text: str, recipient: str, expires_in: int,
                   now: float | None = None) -> dict:
    if not 1 <= expires_in <= settings.AUDIT_PRESIGN_MAX_SECONDS:
        raise ExportError(f"expires_in must be between 1 and {settings.AUDIT_PRESIGN_MAX_SECONDS} seconds")
    start, end = parse_bound(start_text, name="from"), parse_bound(end_text, name="to", end=True)
    if end <= start:
        raise ExportError("'to' must be after 'from'")
    params = {"tenant": tenant.slug, "from": start_text, "to": end_text, "recipient": recipient or "",
              "expires": str(int((now or time.time()) + expires_in)), "by": str(user.pk)}
    params["sig"] = presign_signature(params)
    return params


def presign_query(params: dict) -> str:
    return urlencode([(name, params[name]) for name in (*SIGNED_PARAMS, "sig")])


def presign_check(query, *, now: float | None = None) -> PresignGrant:
    """The grant a presigned query carries, or PresignInvalid saying why not."""
    names = list(query.keys())
    expected = set(SIGNED_PARAMS) | {"sig"}
    if set(names) != expected:
        extra, missing = sorted(set(names) - expected), sorted(expected - set(names))
        raise PresignInvalid(f"presigned URL parameters changed (unexpected: {extra}, missing: {missing})")
    if any(len(query.getlist(name)) != 1 for name in names):
        raise PresignInvalid("presigned URL parameters may appear only once")
    params = {name: query.get(name) for name in expected}
    if not hmac.compare_digest(presign_signature(params).encode(), params["sig"].encode()):
        raise PresignInvalid("presigned URL signature does not match (a parameter was changed)")
    try:
        expires = int(params["expires"])
    except ValueError:
        raise PresignInvalid("presigned URL 'expires' is not a number") from None
    if (now or time.time()) >= expires:
        raise PresignInvalid("presigned URL has expired")
    tenant = Tenant.objects.filter(slug=params["tenant"]).first()
    user = get_user_model().objects.filter(pk=params["by"], is_active=True).first()
    if tenant is None or user is None or tenant.pk not in tenant_ids_granting(user, REVIEW_CAPABILITY):
        raise PresignInvalid("the user who made this URL may no longer export this tenant's audit")
    return PresignGrant(tenant, user, params["from"], params["to"], params["recipient"])
