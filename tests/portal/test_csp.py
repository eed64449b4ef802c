"""The Content-Security-Policy: on every response, and no page relies on
inline script (which the policy refuses)."""
import re

import pytest
from django.test import Client

INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I)


def test_policy_refuses_inline_script(settings):
    policy = dict(part.strip().split(" ", 1) for part in settings.CONTENT_SECURITY_POLICY.split(";"))
    assert policy["script-src"] == "'self'" and policy["default-src"] == "'self'"
    assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"


@pytest.fixture
def kb(tenants):
    from search.models import KnowledgeBase

    return KnowledgeBase.objects.create(tenant=tenants["acme"], name="Handbook")


def test_every_page_carries_the_policy_and_no_inline_script(tenants, make_user, kb, settings):
    curator = make_user("dora", tenants["acme"], "curator", "compliance")
    make_user("dora2", tenants["globex"], "searcher")
    from portal.models import Membership

    Membership.objects.create(user=curator, tenant=tenants["globex"], role="searcher")  # the organisation switch shows
    curator.is_staff = True
    curator.save()
    anonymous, client = Client(), Client()
    client.force_login(curator)
    pages = [(anonymous, "/accounts/login/"), (anonymous, "/api/v1/docs/"),
             (client, "/"), (client, "/radar/"), (client, "/kbs/"), (client, f"/kbs/{kb.pk}/"), (client, "/tokens/"),
             (client, "/audit/dashboard/"), (client, "/admin/audit/auditevent/"), (client, "/api/v1/me")]
    for who, url in pages:
        response = who.get(url)
        assert response.status_code == 200, url
        assert response["Content-Security-Policy"] == settings.CONTENT_SECURITY_POLICY, url
        if response["Content-Type"].startswith("text/html"):
            html = response.content.decode()
            assert not INLINE_SCRIPT.search(html), (url, INLINE_SCRIPT.search(html).group(0))
            assert not INLINE_HANDLER.search(html), (url, INLINE_HANDLER.search(html).group(0))
    assert 'id="tenant-switch"' in client.get("/").content.decode()
