"""Login, logout and lockout leave audit records with who, from where and which session."""
import pytest

from audit.ledger.models import AuditEvent


@pytest.fixture
def alice(tenants, make_user):
    return make_user("alice", tenants["acme"], "searcher")


def test_login_page_renders(client, db):
    response = client.get("/accounts/login/")
    assert response.status_code == 200 and b'name="password"' in response.content


def test_login_and_logout_are_recorded_with_request_facts(client, alice, tenants):
    response = client.post("/accounts/login/", {"username": "alice", "password": "correct-horse-battery"},
                           REMOTE_ADDR="198.51.100.4", HTTP_USER_AGENT="Browser/1.0")
    assert response.status_code == 302
    login = AuditEvent.objects.get(action="auth.login")
    assert (login.tenant, login.username, login.outcome) == (tenants["acme"], "alice", "success")
    assert (login.client_ip, login.user_agent, login.auth_method) == ("198.51.100.4", "Browser/1.0", "session")
    session_key = client.session.session_key
    assert login.session_digest and session_key not in login.session_digest
    assert login.session_digest != session_key
    client.post("/accounts/logout/", REMOTE_ADDR="198.51.100.4")
    logout = AuditEvent.objects.get(action="auth.logout")
    assert logout.session_digest == login.session_digest and logout.tenant == tenants["acme"]
    assert not AuditEvent.objects.filter(session_digest=session_key).exists()


def test_login_chooses_the_named_tenant(client, tenants, make_user):
    user = make_user("dana", tenants["acme"], "searcher")
    from portal.models import Membership

    Membership.objects.create(user=user, tenant=tenants["globex"], role="searcher")
    client.post("/accounts/login/", {"username": "dana", "password": "correct-horse-battery", "tenant": "globex"})
    assert AuditEvent.objects.get(action="auth.login").tenant == tenants["acme"]  # recorded at login
    assert client.get("/tokens/").context["acting_tenant"] == tenants["globex"]
    client.post("/tenant/switch/", {"tenant": "acme"})
    assert client.get("/tokens/").context["acting_tenant"] == tenants["acme"]
    client.post("/tenant/switch/", {"tenant": "nonexistent"})
    assert client.get("/tokens/").context["acting_tenant"] == tenants["acme"]


def test_failed_login_is_recorded_without_the_password(client, alice):
    client.post("/accounts/login/", {"username": "alice", "password": "wrong-password-123"})
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.username == "alice" and event.outcome == "failure"
    assert "wrong-password-123" not in str(vars(event))


def test_failed_login_goes_to_the_chains_of_the_accounts_organisations(client, alice, tenants, make_user):
    from portal.models import Membership

    Membership.objects.create(user=alice, tenant=tenants["globex"], role="searcher")
    client.post("/accounts/login/", {"username": "alice", "password": "wrong-password-123"})
    events = AuditEvent.objects.filter(action="auth.login_failed").order_by("chain")
    assert [(e.tenant, e.user_id, e.username) for e in events] == [
        (tenants["acme"], alice.pk, "alice"), (tenants["globex"], alice.pk, "alice")]
    client.post("/accounts/login/", {"username": "mallory", "password": "wrong-password-123"})
    stranger = AuditEvent.objects.get(action="auth.login_failed", username="mallory")
    assert (stranger.tenant, stranger.chain, stranger.user_id) == (None, 0, None)


def test_repeated_failures_lock_the_account(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong-password-123"})
    response = client.post("/accounts/login/", {"username": "alice", "password": "correct-horse-battery"})
    assert response.status_code == 429
    assert not AuditEvent.objects.filter(action="auth.login").exists()
    assert "_auth_user_id" not in client.session


def test_client_ip_ignores_forwarded_for_from_untrusted_peers(client, alice, settings):
    settings.TRUSTED_PROXIES = []
    client.post("/accounts/login/", {"username": "alice", "password": "correct-horse-battery"},
                REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert AuditEvent.objects.get(action="auth.login").client_ip == "203.0.113.9"


def test_client_ip_believes_forwarded_for_from_trusted_proxies(client, alice, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    client.post("/accounts/login/", {"username": "alice", "password": "correct-horse-battery"},
                REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.20, 10.9.9.9")
    assert AuditEvent.objects.get(action="auth.login").client_ip == "198.51.100.20"


def test_healthz_and_readyz_give_no_details_without_auth(client, db):
    assert client.get("/healthz").json() == {"status": "ok"}
    body = client.get("/readyz").json()
    assert set(body) == {"status"}


def test_the_audit_store_probe_writes_on_this_database(db):
    """readyz's audit-store probe creates, fills and rolls back a table: it must
    succeed on each supported database (it once used SQLite's BLOB type, which
    PostgreSQL lacks, and /readyz stayed 503 there). `make test` runs this on
    SQLite and again on PostgreSQL."""
    from portal.storage import audit_store_check

    assert audit_store_check() == (True, "writable")


def test_api_404_is_problem_json(client, db):
    response = client.get("/api/v1/no-such-route")
    assert response.status_code == 404 and response["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 404
