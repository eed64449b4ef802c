"""Audit API: scoped to the compliance role of the acting tenant, cursor-paginated,
exports by role or by a presigned URL that nothing about can be changed."""
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from audit.ledger.models import AuditEvent
from audit.review.presign import presign_params, presign_query
from tests.audit.conftest import load_tool

EVENTS, EXPORT, PRESIGN = "/api/v1/audit/events", "/api/v1/audit/export", "/api/v1/audit/export/presign"


@pytest.fixture
def officer_api(people, tenants, make_token, bearer):
    return bearer(make_token(people["officer"], tenants["acme"])[1])


def test_events_are_the_acting_tenants_only(searches, officer_api):
    response = officer_api.get(EVENTS)
    assert response.status_code == 200
    assert "globex" not in response.content.decode().lower()
    queries = [e["query"] for e in response.json()["results"]]
    assert "acme vpn setup 3" in queries and all("mac" in e and "prev_hash" in e for e in response.json()["results"])


def test_filters(searches, officer_api, people):
    results = officer_api.get(EVENTS, {"outcome": "failure"}).json()["results"]
    assert [e["query"] for e in results] == ["broken"]
    results = officer_api.get(EVENTS, {"user_id": people["searcher"].pk, "action": "search.completed",
                                       "from": "2000-01-01", "to": "2100-01-01"}).json()["results"]
    assert len(results) == 4
    assert officer_api.get(EVENTS, {"to": "2001-01-01"}).json()["results"] == []
    assert officer_api.get(EVENTS, {"q": "10.1.0.1"}).json()["results"]
    assert officer_api.get(EVENTS, {"q": "globexreq0001"}).json()["results"] == []


def test_bad_filters_are_400_problems(searches, officer_api):
    for params in ({"from": "yesterday"}, {"outcome": "maybe"}, {"user_id": "x"}, {"client_ip": "nope"}):
        response = officer_api.get(EVENTS, params)
        assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"


def test_cursor_pagination_walks_every_event_once(tenants, people, officer_api):
    from audit.ledger.services import record_event

    for i in range(25):
        record_event(action="search.completed", tenant=tenants["acme"], query=f"q{i}")
    seen, url, pages = [], EVENTS + "?limit=10&action=search.completed", 0
    while url:
        body = officer_api.get(url).json()
        seen += [e["seq"] for e in body["results"]]
        url, pages = body["next"], pages + 1
    assert pages == 3 and len(seen) == 25 and seen == sorted(seen, reverse=True)
    assert "cursor=" in officer_api.get(EVENTS + "?limit=10").json()["next"]


def test_listing_is_audited(searches, officer_api):
    officer_api.get(EVENTS, {"outcome": "failure"})
    view = AuditEvent.objects.get(action="audit.view")
    assert view.tenant.slug == "acme" and view.auth_method == "token" and view.token_id
    assert view.detail["page"] == "api.events" and view.detail["filters"] == {"outcome": "failure"}


@pytest.mark.parametrize("who", ["searcher", "globex_searcher"])
def test_non_officers_get_404_everywhere(searches, people, tenants, make_token, bearer, who, signing_key):
    tenant = tenants["acme"] if who == "searcher" else tenants["globex"]
    api = bearer(make_token(people[who], tenant)[1])
    assert api.get(EVENTS).status_code == 404
    assert api.get(EXPORT, {"from": "2000-01-01", "to": "2100-01-01"}).status_code == 404
    assert api.post(PRESIGN, {"from": "2000-01-01", "to": "2100-01-01"}, format="json").status_code == 404


def test_anonymous_gets_401(searches):
    from rest_framework.test import APIClient

    assert APIClient().get(EVENTS).status_code in (401, 403)
    assert APIClient().get(EXPORT, {"from": "2000-01-01", "to": "2100-01-01"}).status_code in (401, 403)


def test_export_by_role_verifies_and_is_audited(searches, officer_api, signing_key):
    response = officer_api.get(EXPORT, {"from": "2000-01-01", "to": "2100-01-01"})
    assert response.status_code == 200
    data = b"".join(response.streaming_content)
    result = load_tool().verify_bundle(data)
    assert result.ok and result.manifest["tenant"]["slug"] == "acme" and result.manifest["kind"] == "range"
    assert b"globex" not in data
    export = AuditEvent.objects.get(action="audit.export")
    assert export.detail["via"] == "api" and export.detail["bundle_sha256"] == response["X-Audit-Export-SHA256"]


def test_export_without_a_signing_key_is_503_naming_the_variable(searches, officer_api, no_signing_key):
    response = officer_api.get(EXPORT, {"from": "2000-01-01", "to": "2100-01-01"})
    assert response.status_code == 503 and "AUDIT_SIGNING_KEY_FILE" in response.json()["detail"]


def test_export_with_bad_range_is_400(searches, officer_api, signing_key):
    assert officer_api.get(EXPORT, {"from": "2020-02-01", "to": "2020-01-01"}).status_code == 400
    assert officer_api.get(EXPORT, {"from": "soon"}).status_code == 400


# --- presigned URLs -------------------------------------------------------------

def presigned(officer_api, **extra):
    response = officer_api.post(PRESIGN, {"from": "2000-01-01", "to": "2100-01-01", **extra}, format="json")
    assert response.status_code == 200, response.content
    url = urlsplit(response.json()["url"])
    return url.path + "?" + url.query


def test_presigned_url_works_without_credentials(searches, officer_api, client, signing_key):
    url = presigned(officer_api, expires_in=600)
    assert set(dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))) == {"tenant", "from", "to", "recipient", "expires", "by", "sig"}
    response = client.get(url)
    assert response.status_code == 200
    assert load_tool().verify_bundle(b"".join(response.streaming_content)).ok
    assert AuditEvent.objects.filter(action="audit.presign", username="chris").count() == 1
    use = AuditEvent.objects.get(action="audit.export")
    assert use.detail["via"] == "presigned-url" and use.username == "chris" and use.outcome == "success"


def test_each_use_of_a_presigned_url_is_an_event(searches, officer_api, client, signing_key):
    url = presigned(officer_api)
    for _ in range(3):
        assert client.get(url).status_code == 200
    assert AuditEvent.objects.filter(action="audit.export", detail__via="presigned-url").count() == 3


def test_presigned_url_fails_after_expiry(searches, officer_api, people, tenants, client, signing_key):
    params = presign_params(tenant=tenants["acme"], user=people["officer"], start_text="2000-01-01",
                            end_text="2100-01-01", recipient="", expires_in=60, now=time.time() - 61)
    response = client.get(f"{EXPORT}?{presign_query(params)}")
    assert response.status_code == 403 and "expired" in response.json()["detail"]
    denied = AuditEvent.objects.get(action="audit.export")
    assert denied.outcome == "denied" and "expired" in denied.detail["reason"]


@pytest.mark.parametrize("change", [
    {"tenant": "globex"}, {"from": "1999-01-01"}, {"to": "2100-01-02"}, {"expires": "9999999999"},
    {"by": "1"}, {"recipient": "AAAA"}, {"sig": "0" * 64}, {"extra": "1"}, {"drop": "recipient"},
])
def test_presigned_url_fails_with_any_parameter_changed(searches, officer_api, client, signing_key, people, change):
    url = presigned(officer_api)
    params = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    if "drop" in change:
        params.pop(change["drop"])
    else:
        if change.get("by") == "1" and str(people["officer"].pk) == "1":
            change = {"by": "2"}
        params.update(change)
    response = client.get(f"{EXPORT}?{urlencode(params)}")
    assert response.status_code == 403, response.content
    assert b"globex-secret" not in response.content
    assert AuditEvent.objects.filter(action="audit.export", outcome="denied").count() == 1


def test_presigned_url_with_a_repeated_parameter_fails(searches, officer_api, client, signing_key):
    url = presigned(officer_api)
    assert client.get(url + "&from=2000-01-01").status_code == 403


def test_presigned_url_dies_with_its_makers_role(searches, officer_api, client, people, signing_key):
    from portal.models import Membership

    url = presigned(officer_api)
    Membership.objects.filter(user=people["officer"], role="compliance").delete()
    assert client.get(url).status_code == 403


def test_presign_validates_its_input(searches, officer_api, settings):
    assert officer_api.post(PRESIGN, {"from": "x", "to": "2100-01-01"}, format="json").status_code == 400
    too_long = settings.AUDIT_PRESIGN_MAX_SECONDS + 1
    assert officer_api.post(PRESIGN, {"from": "2000-01-01", "to": "2100-01-01", "expires_in": too_long},
                            format="json").status_code == 400
    assert officer_api.post(PRESIGN, {"from": "2000-01-01", "to": "2100-01-01", "recipient": "nope"},
                            format="json").status_code == 400


def test_the_presign_answer_is_never_cached(searches, officer_api, signing_key):
    response = officer_api.post(PRESIGN, {"from": "2000-01-01", "to": "2100-01-01"}, format="json")
    assert response.status_code == 200 and "sig=" in response.json()["url"]
    assert "no-store" in {part.strip() for part in response["Cache-Control"].split(",")}
