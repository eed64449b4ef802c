"""API tokens: shown once, stored as a digest, expiring, revocable, bound to one tenant."""
import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from audit.ledger.models import AuditEvent
from portal.models import ApiToken


def database_dump() -> str:
    """Every value in every table, as text (SQLite and PostgreSQL alike)."""
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            rows.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(rows)


@pytest.fixture
def alice(tenants, make_user):
    return make_user("alice", tenants["acme"], "searcher")


def test_database_never_holds_a_usable_token(alice, tenants, make_token):
    row, text = make_token(alice, tenants["acme"])
    dump = database_dump()
    assert text not in dump
    assert text[4:20] not in dump  # not even the secret part
    assert row.digest in dump


def test_a_token_authenticates_for_its_tenant(alice, tenants, make_token, bearer):
    _, text = make_token(alice, tenants["acme"])
    response = bearer(text).get("/api/v1/me")
    assert response.status_code == 200
    assert response.json() == {"username": "alice", "tenant": "acme", "roles": ["searcher"]}
    assert ApiToken.objects.get().last_used_at is not None


@pytest.mark.parametrize("state,why", [("expired", "token expired"), ("revoked", "token revoked")])
def test_expired_or_revoked_token_is_401(alice, tenants, make_token, bearer, state, why):
    row, text = make_token(alice, tenants["acme"])
    if state == "expired":
        ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    else:
        ApiToken.objects.filter(pk=row.pk).update(revoked_at=timezone.now())
    response = bearer(text).get("/api/v1/me")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == why
    assert response["WWW-Authenticate"] == "Bearer"


def test_unknown_token_and_malformed_header_are_401(db, bearer):
    assert bearer("sp_nope").get("/api/v1/me").status_code == 401
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer two parts")
    assert api.get("/api/v1/me").status_code == 401
    assert APIClient().get("/api/v1/me").status_code == 401


def test_token_of_tenant_a_cannot_act_for_tenant_b(tenants, make_user, make_token, bearer):
    """A user in both tenants: the token for acme never reaches globex objects."""
    both = make_user("dana", tenants["acme"], "admin")
    from portal.models import Membership

    Membership.objects.create(user=both, tenant=tenants["globex"], role="admin")
    _, acme_text = make_token(both, tenants["acme"])
    globex_row, _ = make_token(both, tenants["globex"])
    api = bearer(acme_text)
    assert api.get("/api/v1/me").json()["tenant"] == "acme"
    listed = [t["id"] for t in api.get("/api/v1/tokens").json()["results"]]
    assert globex_row.pk not in listed
    assert api.delete(f"/api/v1/tokens/{globex_row.pk}").status_code == 404
    globex_row.refresh_from_db()
    assert globex_row.revoked_at is None


def test_token_stops_working_when_membership_ends(alice, tenants, make_token, bearer):
    _, text = make_token(alice, tenants["acme"])
    alice.memberships.all().delete()
    assert bearer(text).get("/api/v1/me").status_code == 401


def test_tokens_page_shows_a_new_token_once_and_audits(alice, tenants, login):
    client = login(alice)
    nonce = client.get("/tokens/").context["nonce"]
    response = client.post("/tokens/", {"label": "laptop", "days": 7, "nonce": nonce}, REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 200
    text = response.context["new_token"]
    assert text.startswith("sp_") and text in response.content.decode()
    again = client.get("/tokens/").content.decode()
    assert text not in again and text[:10] in again
    event = AuditEvent.objects.get(action="token.create")
    assert (event.tenant, event.username, event.client_ip) == (tenants["acme"], "alice", "192.0.2.7")
    assert text not in str(event.detail)


def test_tokens_page_rejects_bad_days(alice, login):
    client = login(alice)
    nonce = client.get("/tokens/").context["nonce"]
    response = client.post("/tokens/", {"label": "x", "days": 0, "nonce": nonce})
    assert response.status_code == 400 and ApiToken.objects.count() == 0


def test_resubmitting_the_token_form_makes_no_second_token(alice, login):
    client = login(alice)
    nonce = client.get("/tokens/").context["nonce"]
    assert client.post("/tokens/", {"label": "x", "days": 5, "nonce": nonce}).status_code == 200
    again = client.post("/tokens/", {"label": "x", "days": 5, "nonce": nonce})
    assert again.status_code == 302 and ApiToken.objects.count() == 1


def test_revoke_from_page_is_audited(alice, tenants, make_token, login, bearer):
    row, text = make_token(alice, tenants["acme"])
    response = login(alice).post(f"/tokens/{row.pk}/revoke/")
    assert response.status_code == 302
    assert bearer(text).get("/api/v1/me").status_code == 401
    assert AuditEvent.objects.filter(action="token.revoke", resource_id=str(row.pk)).count() == 1


def test_token_create_command_prints_token_once_and_audits(alice, tenants, bearer, capsys):
    from django.core.management import call_command

    call_command("token_create", "--user", "alice", "--tenant", "acme", "--days", "3", "--label", "ci")
    text = capsys.readouterr().out.strip()
    assert bearer(text).get("/api/v1/me").status_code == 200
    event = AuditEvent.objects.get(action="token.create")
    assert event.auth_method == "cli" and event.username == "alice"


def test_token_create_command_rejects_non_member(alice, tenants):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not a member"):
        call_command("token_create", "--user", "alice", "--tenant", "globex")


def test_the_page_that_shows_a_new_token_is_never_cached(client, alice):
    client.force_login(alice)
    nonce = client.get("/tokens/").context["nonce"]
    response = client.post("/tokens/", {"days": 30, "label": "ci", "nonce": nonce})
    assert response.status_code == 200 and response.context["new_token"]
    assert response.context["new_token"] in response.content.decode()
    directives = {part.strip() for part in response["Cache-Control"].split(",")}
    assert {"no-store", "private"} <= directives


@pytest.mark.postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_token_row_held_locked_does_not_hold_up_its_request(alice, tenants, make_token):
    # Marking the token used is bookkeeping: on PostgreSQL it waits at most
    # LAST_USED_BUSY_TIMEOUT_MS for the row's lock, then gives way.
    import threading
    import time

    from django.db import connections, transaction

    from portal.services import token_authenticate

    row, text = make_token(alice, tenants["acme"])
    ApiToken.objects.filter(pk=row.pk).update(last_used_at=None)
    locked, release = threading.Event(), threading.Event()

    def hold():  # another transaction holds the token's row
        try:
            with transaction.atomic():
                ApiToken.objects.select_for_update().get(pk=row.pk)
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        started = time.monotonic()
        token, why = token_authenticate(text)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        holder.join(30)
    assert token is not None and token.pk == row.pk and why == ""
    assert elapsed < 5, f"waited {elapsed:.1f} s for the row lock"
    assert ApiToken.objects.get(pk=row.pk).last_used_at is None  # the bookkeeping gave way
    with connection.cursor() as cursor:  # and the connection's own setting is back
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] == "0"
