"""Audit review in the admin: scoped by the compliance role, read-only, audited, exportable."""
import datetime as dt
import io
import json
import re
import zipfile

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.ledger.models import AuditEvent
from tests.audit.conftest import drop_triggers, load_tool

LIST = "/admin/audit/auditevent/"


def detail(event):
    return f"{LIST}{event.pk}/change/"


def test_officer_sees_only_their_tenants_events(searches, people, login):
    response = login(people["officer"]).get(LIST)
    assert response.status_code == 200
    body = response.content.decode()
    assert "acme vpn setup 3" in body
    assert "globex" not in body.lower()


def test_list_columns(searches, people, login):
    body = login(people["officer"]).get(LIST).content.decode()
    for heading in ("time (UTC)", "User", "Action", "Outcome", "Query", "Top score", "latency (ms)"):
        assert heading.lower() in body.lower()
    assert "alice" in body and "search.completed" in body and "4.5" in body


def test_other_tenants_event_detail_is_not_shown(searches, people, login):
    client = login(people["officer"])
    response = client.get(detail(searches["globex"][0]), follow=True)
    assert b"globex-secret" not in response.content
    assert b"10.2.0.2" not in response.content
    assert AuditEvent.objects.filter(action="audit.view", detail__page="admin.detail").count() == 0


def test_filter_dropdowns_hold_no_other_tenants_users_or_kbs(searches, people, login):
    body = login(people["officer"]).get(LIST).content.decode()
    assert "bob-globex" not in body and "Globex Deals" not in body
    assert "alice" in body and "Acme IT (#11)" in body


def test_globex_officer_sees_globex_only(searches, people, login):
    body = login(people["globex_officer"]).get(LIST).content.decode()
    assert "globex-secret merger" in body and "acme vpn" not in body and "Acme IT" not in body


@pytest.mark.parametrize("who", ["searcher", "globex_searcher"])
def test_non_officers_get_no_audit_admin(searches, people, login, who):
    user = people[who]
    client = login(user)
    for is_staff in (False, True):  # the staff flag opens nothing: the compliance role does
        user.is_staff = is_staff
        user.save()
        assert client.get(LIST).status_code == 403
        response = client.get(detail(searches["acme"][0]))
        assert response.status_code == 403 and b"acme vpn" not in response.content
        index = client.get("/admin/")
        assert index.status_code == 403 and b"Compliance officer" in index.content


def test_read_only_no_add_change_delete(searches, people, login):
    client = login(people["officer"])
    event = searches["acme"][0]
    assert client.get(f"{LIST}add/").status_code == 403
    assert client.get(f"{LIST}{event.pk}/delete/").status_code == 403
    response = client.post(detail(event), {"query": "changed"})
    assert response.status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).query == "acme vpn setup 0"
    form = client.get(detail(event)).content.decode().split('id="auditevent_form"')[1].split("</form>")[0]
    assert 'name="_save"' not in form and "<textarea" not in form and "<select" not in form
    assert re.findall(r'<input type="(\w+)"', form) == ["hidden"]  # the CSRF token only


def test_detail_shows_every_field_and_that_mac_and_link_verify(searches, people, login):
    event = searches["acme"][1]
    body = login(people["officer"]).get(detail(event)).content.decode()
    for value in (event.mac, event.prev_hash, event.key_id, event.request_id, "10.1.0.1", "Acme IT", "pytest"):
        assert value in body
    assert "HMAC verifies" in body and f"links to seq {event.seq - 1}" in body


def test_detail_labels_are_chinese_when_the_browser_asks(searches, people, login):
    from django.utils import translation

    client = login(people["officer"])
    body = client.get(detail(searches["acme"][1]), HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content.decode()
    with translation.override("zh-hans"):
        for field in AuditEvent._meta.concrete_fields:
            if field.attname in ("id", "mac"):
                continue
            label = str(field.verbose_name)
            assert re.search(r"[\u4e00-\u9fff]", label), f"{field.attname} has no Chinese label: {label!r}"
            assert label[:1].upper() + label[1:] in body, label
    assert "机构编号；平台链为 0" in body


def test_detail_shows_a_tampered_event(searches, people, login):
    event = searches["acme"][1]
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET query = 'rewritten' WHERE id = %s", [event.pk])
    body = login(people["officer"]).get(detail(event)).content.decode()
    assert "HMAC does NOT verify" in body


def test_each_page_view_records_one_audit_view(searches, people, login):
    client = login(people["officer"])
    client.get(LIST)
    client.get(detail(searches["acme"][0]))
    views = list(AuditEvent.objects.filter(action="audit.view").order_by("seq"))
    assert [v.detail["page"] for v in views] == ["admin.list", "admin.detail"]
    assert all(v.tenant.slug == "acme" and v.username == "chris" and v.request_id for v in views)
    assert views[1].detail["event_id"] == searches["acme"][0].pk


def test_filter_by_user_and_date(searches, people, tenants, login):
    from audit.ledger.services import record_event

    record_event(action="search.completed", tenant=tenants["acme"], user=people["officer"], query="officer asks")
    today = dt.date.today().isoformat()
    client = login(people["officer"])
    body = client.get(LIST, {"user": people["searcher"].pk, "occurred_from": today, "occurred_to": today}).content
    assert b"acme vpn setup 0" in body and b"officer asks" not in body
    body = client.get(LIST, {"occurred_to": "2001-01-01"}).content
    assert b"acme vpn setup" not in body
    assert client.get(LIST, {"occurred_from": "not-a-date"}).status_code == 302  # the admin's ?e=1


@pytest.mark.parametrize("term,hit", [("10.1.0.1", "acme vpn setup 0"), ("acmereq0002", "acme vpn setup 2"),
                                      ("alice", "acme vpn setup 1"), ("setup 3", "acme vpn setup 3")])
def test_search_by_ip_request_id_username_and_query(searches, people, login, term, hit):
    body = login(people["officer"]).get(LIST, {"q": term}).content.decode()
    assert hit in body and "globex" not in body.lower()


def test_search_for_another_tenants_request_id_finds_nothing(searches, people, login):
    body = login(people["officer"]).get(LIST, {"q": "globexreq0001"}).content.decode()
    assert "globex-secret" not in body and "0 audit events" in body


def test_changelist_never_counts_the_whole_table(searches, people, login):
    client = login(people["officer"])
    with CaptureQueriesContext(connection) as queries:
        assert client.get(LIST).status_code == 200
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "audit_auditevent" in q["sql"]]
    assert counts, "expected a bounded count"
    assert all("LIMIT" in sql.upper() for sql in counts), counts


def test_export_action_gives_a_bundle_the_tool_verifies(searches, people, login, signing_key):
    client = login(people["officer"])
    chosen = [searches["acme"][0].pk, searches["acme"][2].pk]
    response = client.post(LIST, {"action": "export_signed_bundle", "_selected_action": chosen, "index": 0})
    assert response.status_code == 200 and response["Content-Disposition"].startswith("attachment")
    data = b"".join(response.streaming_content)
    result = load_tool().verify_bundle(data, public_key=None)
    assert result.ok, result.problems
    assert [e["seq"] for e in result.events] == [searches["acme"][0].seq, searches["acme"][2].seq]
    assert result.manifest["kind"] == "selection" and result.manifest["gaps"] == [[2, 2]]
    assert any("PARTIAL" in note for note in result.notes)
    assert AuditEvent.objects.filter(action="audit.export", tenant__slug="acme", username="chris").count() == 1


def test_export_action_of_the_filtered_set(searches, people, login, signing_key):
    client = login(people["officer"])
    ids = [e.pk for e in searches["acme"]]
    response = client.post(f"{LIST}?outcome=success&action=search.completed", {"action": "export_signed_bundle", "_selected_action": ids[:1],
                                                      "select_across": "1", "index": 0})
    data = b"".join(response.streaming_content)
    events = zipfile.ZipFile(io.BytesIO(data)).read("events.jsonl").decode()
    assert events.count("\n") == 4 and "broken" not in events and "globex" not in events


def test_export_action_cannot_reach_another_tenant(searches, people, login, signing_key):
    client = login(people["officer"])
    response = client.post(LIST, {"action": "export_signed_bundle", "index": 0,
                                  "_selected_action": [searches["globex"][0].pk]})
    assert response.status_code == 302 and not AuditEvent.objects.filter(action="audit.export").exists()


def test_export_action_without_a_key_says_which_variable(searches, people, login, no_signing_key):
    client = login(people["officer"])
    response = client.post(LIST, {"action": "export_signed_bundle", "index": 0,
                                  "_selected_action": [searches["acme"][0].pk]}, follow=True)
    assert b"AUDIT_SIGNING_KEY_FILE" in response.content


def test_officer_of_two_organisations_filters_and_exports_one(searches, people, tenants, login, signing_key):
    from portal.models import Membership

    Membership.objects.create(user=people["officer"], tenant=tenants["globex"], role="compliance")
    client = login(people["officer"])
    body = client.get(LIST).content.decode()
    assert "globex-secret merger" in body and "acme vpn" in body
    assert f"?organisation={tenants['globex'].pk}" in body
    everything = {"action": "export_signed_bundle", "index": 0, "select_across": "1",
                  "_selected_action": [searches["acme"][0].pk]}
    refused = client.post(LIST, everything, follow=True).content.decode()
    assert "one organisation at a time" in refused
    globex_only = f"{LIST}?organisation={tenants['globex'].pk}"
    listed = client.get(globex_only).content.decode()
    assert "globex-secret merger" in listed and "acme vpn" not in listed
    response = client.post(globex_only, everything)
    events = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).read("events.jsonl").decode()
    rows = [json.loads(line) for line in events.splitlines()]
    assert {row["tenant_id"] for row in rows} == {tenants["globex"].pk}  # its searches and the views just made
    assert sum(row["action"] == "search.completed" for row in rows) == len(searches["globex"])


def test_officer_of_one_organisation_gets_no_organisation_filter(searches, people, login):
    assert "?organisation=" not in login(people["officer"]).get(LIST).content.decode()


def test_superuser_sees_every_tenant(searches, login, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="correct-horse-battery")
    body = login(root).get(LIST).content.decode()
    assert "globex-secret" in body and "acme vpn" in body
    assert AuditEvent.objects.filter(action="audit.view", tenant=None).count() == 1


def test_reviews_of_the_log_are_hidden_by_default_and_stay_in_the_chain(searches, people, login):
    from audit.ledger.verify import verify_chain

    client = login(people["officer"])
    for _ in range(3):
        client.get(LIST)
    views = AuditEvent.objects.filter(action="audit.view", tenant__slug="acme")
    assert views.count() == 3
    body = client.get(LIST).content.decode()
    assert "audit.view</td>" not in body and "acme vpn setup 0" in body
    assert "?reviews=shown" in body  # the filter that shows them
    shown = client.get(LIST, {"reviews": "shown"}).content.decode()
    assert shown.count("audit.view</td>") == 4 and "acme vpn setup 0" in shown  # each list view is one
    assert client.get(LIST, {"action": "audit.view"}).content.decode().count("audit.view</td>") == 5
    report = verify_chain(searches["acme"][0].chain)
    assert report.ok and report.events == AuditEvent.objects.filter(chain=searches["acme"][0].chain).count()
    assert views.count() == 6


def test_detail_time_has_seconds_and_milliseconds_and_the_score_is_rounded(tenants, people, login):
    import datetime as dt

    from audit.ledger.services import record_event

    event = record_event(action="search.completed", tenant=tenants["acme"], user=people["searcher"], query="q",
                         top_score=0.812345678, latency_ms=12.3456)
    body = login(people["officer"]).get(detail(event)).content.decode()
    stamp = event.occurred_at.astimezone(dt.timezone.utc)
    assert stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}" in body
    assert "0.812" in body and "0.812345678" not in body and "0.8123" not in body
    assert "12.3" in body and "12.3456" not in body


def test_dashboard_link_only_for_those_who_may_open_it(searches, people, login, django_user_model):
    assert 'href="/audit/dashboard/"' in login(people["officer"]).get(LIST).content.decode()
    root = django_user_model.objects.create_superuser("root", password="correct-horse-battery")
    client = login(root)
    assert 'href="/audit/dashboard/"' not in client.get(LIST).content.decode()
    assert client.get("/audit/dashboard/").status_code == 403  # no compliance role in an organisation
