"""No `next` taken from a request is followed off-site (issue 9, defect 12)."""
import re

import pytest

OFF_SITE = ["https://evil.example/phish", "//evil.example", "/\\evil.example", "http:evil.example",
            "javascript:alert(1)"]


@pytest.fixture
def dana(tenants, make_user):
    from portal.models import Membership

    user = make_user("dana", tenants["acme"], "searcher")
    Membership.objects.create(user=user, tenant=tenants["globex"], role="searcher")
    return user


@pytest.mark.parametrize("target", OFF_SITE)
def test_tenant_switch_does_not_follow_an_off_site_next(client, dana, target):
    client.force_login(dana)
    response = client.post("/tenant/switch/", {"tenant": "globex", "next": target})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/tokens/").context["acting_tenant"].slug == "globex"  # the switch itself happened


def test_tenant_switch_follows_a_same_site_next(client, dana):
    client.force_login(dana)
    response = client.post("/tenant/switch/", {"tenant": "globex", "next": "/kbs/?page=2"})
    assert response.status_code == 302 and response["Location"] == "/kbs/?page=2"


def test_404_for_a_double_slash_path_does_not_put_it_into_next_fields(client, dana):
    client.force_login(dana)
    # The test client would read `//evil.example` as a host; PATH_INFO is what a server passes.
    response = client.get("/unused", PATH_INFO="//evil.example")
    assert response.status_code == 404
    page = response.content.decode()
    assert 'id="tenant-switch"' in page  # the organisation switcher is on the page
    nexts = re.findall(r'name="next"[^>]*value="([^"]*)"|value="([^"]*)"[^>]*name="next"', page)
    values = [a or b for a, b in nexts]
    assert len(values) >= 2 and "evil.example" not in page
    assert all(v.startswith("/") and not v.startswith("//") for v in values)


def test_pages_put_their_own_path_into_next_fields(client, dana):
    client.force_login(dana)
    page = client.get("/tokens/?x=1").content.decode()
    assert 'name="next" value="/tokens/"' in page and 'value="/tokens/?x=1"' in page


@pytest.mark.parametrize("target", OFF_SITE)
def test_login_does_not_follow_an_off_site_next(client, dana, target):
    response = client.post("/accounts/login/?next=" + target,
                           {"username": "dana", "password": "correct-horse-battery", "next": target})
    assert response.status_code == 302 and "evil.example" not in response["Location"]
    assert response["Location"] == "/"


@pytest.mark.parametrize("target", OFF_SITE)
def test_logout_and_language_switch_do_not_follow_an_off_site_next(client, dana, target):
    response = client.post("/i18n/setlang/", {"language": "en", "next": target})
    assert response.status_code == 302 and "evil.example" not in response["Location"]
    client.force_login(dana)
    response = client.post("/accounts/logout/", {"next": target})
    assert response.status_code == 302 and "evil.example" not in response["Location"]
