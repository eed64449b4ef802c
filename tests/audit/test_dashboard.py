"""The compliance dashboard: local rendering, scoped, audited."""
import re

from audit.ledger.models import AuditEvent

URL = "/audit/dashboard/"


def test_officer_sees_the_dashboard(searches, people, login, signing_key):
    from audit.ledger.checkpoints import checkpoint_create

    checkpoint_create(chain=searches["acme"][0].chain, tenant=searches["acme"][0].tenant)
    response = login(people["officer"]).get(URL)
    assert response.status_code == 200
    body = response.content.decode()
    assert "<svg" in body and "Searches per day" in body
    assert "alice" in body  # most active user
    assert "20%" in body  # 1 of 5 searches failed
    assert "intact since the checkpoint" in body
    assert "globex" not in body.lower() and "bob-globex" not in body


def test_dashboard_loads_nothing_from_outside(searches, people, login):
    body = login(people["officer"]).get(URL).content.decode()
    assert not re.search(r'(src|href)="(https?:)?//', body)
    assert all(src.startswith("/static/") for src in re.findall(r'<script[^>]*src="([^"]+)"', body))


def test_dashboard_view_is_audited(searches, people, login):
    login(people["officer"]).get(URL)
    assert AuditEvent.objects.filter(action="audit.view", detail__page="dashboard", tenant__slug="acme").count() == 1


def test_dashboard_is_403_naming_the_role_for_a_searcher(searches, people, login):
    response = login(people["searcher"]).get(URL)
    assert response.status_code == 403
    assert b"Compliance officer" in response.content and b"another organisation" not in response.content
