"""/metrics (issue 10, item 2): the Prometheus text format from loopback or
TRUSTED_PROXIES or with a staff user's token; refused to anyone else; never a
query text, a tenant's data or a key."""
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keystore.keys import get_keyring
from search.engine import get_engine
from tests.search.portal_fixtures import faq_kb, people, served, token_for  # noqa: F401

QUERY = "how do I reset my forgotten zebracorn password"


def scrape(client, **extra):
    return client.get("/metrics", **extra)


def families(response) -> dict:
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def samples(found: dict, name: str) -> list:
    return found[name].samples if name in found else []


def test_metrics_from_loopback_in_prometheus_format_without_query_text(faq_kb, people, token_for, client):
    api = token_for(people["alice"])
    response = api.post("/api/v1/search", {"kb": faq_kb.pk, "query": QUERY, "top_k": 3}, format="json")
    assert response.status_code == 200
    assert api.post("/api/v1/search", {"kb": faq_kb.pk, "query": "", "top_k": 3},
                    format="json").status_code == 400

    metrics = scrape(client, REMOTE_ADDR="127.0.0.1")
    assert metrics.status_code == 200
    assert metrics["Content-Type"].startswith("text/plain; version=")
    found = families(metrics)
    # Latency per route name, never per raw path.
    routes = {s.labels["route"] for s in samples(found, "portal_http_request_duration_seconds")}
    assert any("search" in route for route in routes), routes
    assert not any(route.startswith("/") for route in routes)
    searches = {(s.labels["kind"], s.labels["outcome"]): s.value for s in samples(found, "portal_searches")
                if s.name == "portal_searches_total"}
    assert searches.get(("kb", "completed"), 0) >= 1 and searches.get(("kb", "rejected"), 0) >= 1
    forward = [s for s in samples(found, "portal_model_forward_seconds") if s.name.endswith("_count")]
    assert forward and forward[0].value >= 1
    appends = [s for s in samples(found, "portal_audit_append_seconds") if s.name.endswith("_count")]
    assert appends and appends[0].value >= 3  # kb.create, doc.import, search.submitted/completed…
    assert "portal_audit_append_failures" in found
    model = [s for s in samples(found, "portal_model_info") if s.value == 1]
    assert [s.labels["model_id"] for s in model] == [faq_kb.model_id]
    assert [s.labels["backend"] for s in model] == [get_engine().backend]  # which runtime runs the forward pass

    text = metrics.content.decode()
    assert QUERY not in text and "zebracorn" not in text
    for private in (faq_kb.name, "acme", "Acme", "alice", faq_kb.documents.first().text[:30]):
        assert private not in text, private
    ring = get_keyring()
    for key in (ring.model_key, ring.audit_key):
        assert key.hex() not in text and key.hex().upper() not in text


def test_metrics_are_refused_from_elsewhere_without_a_staff_token(people, make_token, bearer, tenants, client,
                                                                  settings):
    settings.TRUSTED_PROXIES = ["10.20.0.0/24"]
    assert scrape(client, REMOTE_ADDR="192.0.2.7").status_code == 404
    # A client behind the trusted proxy is judged by its own address.
    assert scrape(client, REMOTE_ADDR="10.20.0.5", HTTP_X_FORWARDED_FOR="192.0.2.7").status_code == 404
    assert scrape(client, REMOTE_ADDR="10.20.0.5", HTTP_X_FORWARDED_FOR="127.0.0.1, 192.0.2.7").status_code == 404
    # The proxy's network itself (the operators' scraper) may read them.
    assert scrape(client, REMOTE_ADDR="10.20.0.9").status_code == 200
    _, searcher = make_token(people["alice"], tenants["acme"])
    assert bearer(searcher).get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 403
    assert bearer("sp_" + "x" * 43).get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 401
    operator = people["carol"]
    operator.is_staff = True
    operator.save()
    _, staff = make_token(operator, tenants["acme"])
    response = bearer(staff).get("/metrics", REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 200 and b"portal_http_request_duration_seconds" in response.content
    operator.is_active = False
    operator.save()
    assert bearer(staff).get("/metrics", REMOTE_ADDR="192.0.2.7").status_code in (401, 403)


def test_audit_append_failures_are_counted(people, tenants, monkeypatch):
    from audit.ledger import services
    from audit.ledger.metrics import AUDIT_APPEND_FAILURES

    before = AUDIT_APPEND_FAILURES._value.get()

    def broken(values, key):
        raise OSError("disk full")

    monkeypatch.setattr(services, "_append", broken)
    with pytest.raises(services.AuditUnavailable):
        services.record_event(action="auth.login", tenant=tenants["acme"], user=people["alice"])
    assert AUDIT_APPEND_FAILURES._value.get() == before + 1
