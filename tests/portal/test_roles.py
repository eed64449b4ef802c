"""Each role lands where its work is, sees only links it may follow, and a
page its role does not allow says which role it needs (issue 9, defect 7)."""
import re

import pytest

from audit.ledger.models import AuditEvent

PASSWORD = "correct-horse-battery"
LANDING = {"searcher": "/", "curator": "/kbs/", "compliance": "/audit/dashboard/", "admin": "/tokens/"}


@pytest.fixture
def staff(tenants, make_user):
    acme = tenants["acme"]
    return {role: make_user(name, acme, role) for name, role in
            [("alice", "searcher"), ("carol", "curator"), ("chris", "compliance"), ("adam", "admin")]}


def nav_links(html: str) -> list[str]:
    nav = html.split('<nav class="main"', 1)[1].split("</nav>", 1)[0]
    return re.findall(r'href="([^"]+)"', nav)


@pytest.mark.parametrize("role", sorted(LANDING))
def test_login_lands_where_the_roles_work_is(client, staff, role):
    response = client.post("/accounts/login/", {"username": staff[role].username, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == LANDING[role]
    assert client.get(response["Location"]).status_code == 200
    client.logout()  # a page asked for before signing in still wins over the landing page
    response = client.post("/accounts/login/", {"username": staff[role].username, "password": PASSWORD,
                                                "next": "/tokens/?x=1"})
    assert response["Location"] == "/tokens/?x=1"


def test_compliance_officer_on_the_start_page_goes_to_the_dashboard(client, staff):
    client.force_login(staff["compliance"])
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/audit/dashboard/"


def test_user_without_a_role_gets_the_welcome_page_not_a_loop(client, db, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", password=PASSWORD))
    response = client.get("/")
    assert response.status_code == 200 and "search/no_search.html" in [t.name for t in response.templates]
    assert nav_links(response.content.decode()) == []


EXPECTED_NAV = {
    "searcher": ["/", "/radar/", "/kbs/", "/tokens/"],
    "curator": ["/", "/radar/", "/kbs/", "/tokens/"],
    "admin": ["/", "/radar/", "/kbs/", "/tokens/"],
    "compliance": ["/tokens/", "/audit/dashboard/", "/admin/audit/auditevent/"],
}


@pytest.mark.parametrize("role", sorted(EXPECTED_NAV))
def test_nav_holds_only_links_the_role_may_follow(client, staff, role):
    client.force_login(staff[role])
    links = nav_links(client.get("/tokens/").content.decode())
    assert links == EXPECTED_NAV[role]
    for link in links:
        assert client.get(link).status_code == 200, link


@pytest.mark.parametrize("role", ["admin", "searcher", "curator"])
def test_dashboard_refusal_names_the_role_needed_not_another_organisation(client, staff, role):
    client.force_login(staff[role])
    response = client.get("/audit/dashboard/")
    assert response.status_code == 403
    body = response.content.decode()
    assert "belongs to another organisation" not in body
    assert "This page is for these roles: Compliance officer." in body
    assert f"Your roles in Acme: {staff[role].memberships.get().get_role_display()}." in body
    assert f'href="{LANDING[role]}"' in body  # back to their own work
    assert '<nav class="main"' in body  # the portal page, with the portal's navigation
    assert AuditEvent.objects.filter(action="access.denied", resource_id="audit.review",
                                     username=staff[role].username).count() == 1


def test_radar_refusal_names_the_search_roles(client, staff):
    client.force_login(staff["compliance"])
    body = client.get("/radar/").content.decode()
    assert "This page is for these roles: Searcher, Curator, Tenant administrator." in body
    assert "Your roles in Acme: Compliance officer." in body


@pytest.mark.parametrize("role", ["searcher", "curator", "admin"])
@pytest.mark.parametrize("is_staff", [False, True])
def test_admin_for_a_non_reviewer_is_the_portals_403_page(client, staff, role, is_staff):
    user = staff[role]
    user.is_staff = is_staff
    user.save()
    client.force_login(user)
    for path in ("/admin/", "/admin/audit/auditevent/", "/admin/login/"):
        response = client.get(path)
        assert response.status_code == 403, path
        body = response.content.decode()
        assert "not authorized" not in body and "Django administration" not in body
        assert "This page is for these roles: Compliance officer." in body
    assert AuditEvent.objects.filter(action="access.denied", resource_id="audit.review").count() == 3


def test_admin_signs_in_through_the_portals_login_page(client, db):
    response = client.get("/admin/audit/auditevent/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/admin/audit/auditevent/"
    assert client.get("/admin/login/?next=/admin/")["Location"] == "/accounts/login/?next=/admin/"


def test_compliance_officer_opens_the_admin_without_the_staff_flag(client, staff):
    assert not staff["compliance"].is_staff
    client.force_login(staff["compliance"])
    assert client.get("/admin/audit/auditevent/").status_code == 200
