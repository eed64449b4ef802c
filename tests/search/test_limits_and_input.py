"""Bad input and limits: a clear 4xx problem, and nothing stored."""
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.ledger.models import AuditEvent
from search.models import Document, KnowledgeBase
from tests.search.portal_fixtures import faq_kb, people, served, token_for  # noqa: F401


def problem(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


def nothing_stored(kb=None):
    searches = AuditEvent.objects.filter(action__in=["search.submitted", "search.completed"]).count()
    return searches == 0 and (kb is None or kb.documents.count() == 60)


@pytest.mark.parametrize("body,status,words", [
    ({"kb": "FAQ", "query": ""}, 400, "query is empty"),
    ({"kb": "FAQ", "query": "   "}, 400, "query is empty"),
    ({"kb": "FAQ", "query": 42}, 400, "query"),
    ({"kb": "FAQ", "query": "x", "top_k": "5"}, 400, "top_k"),
    ({"kb": "FAQ", "query": "x", "top_k": 0}, 400, "top_k must be between"),
    ({"kb": "FAQ", "query": "x", "top_k": 10_000}, 400, "top_k must be between"),
    ({"kb": "FAQ", "query": "x" * 2001}, 413, "limit is 2000"),
    ({"kb": "No such KB", "query": "x"}, 404, "not found"),
    ({"kb": 999999, "query": "x"}, 404, "not found"),
    ({"kb": [1], "query": "x"}, 400, "kb must be"),
    ({"query": "x"}, 400, "invalid"),
])
def test_bad_search_requests(faq_kb, people, token_for, body, status, words):
    response = token_for(people["alice"]).post("/api/v1/search", body, format="json")
    problem_body = problem(response, status)
    assert words.lower() in str(problem_body).lower()
    assert nothing_stored(faq_kb)


def test_limit_names_which_limit(faq_kb, people, token_for):
    body = problem(token_for(people["alice"]).post("/api/v1/search", {"kb": "FAQ", "query": "x" * 5000},
                                                   format="json"), 413)
    assert body["limit"] == "SEARCH_MAX_QUERY_CHARS"


def test_malformed_json_and_wrong_content_type(faq_kb, people, token_for):
    api = token_for(people["alice"])
    problem(api.post("/api/v1/search", data="{not json", content_type="application/json"), 400)
    problem(api.post("/api/v1/search", data="[1, 2]", content_type="application/json"), 400)
    problem(api.post("/api/v1/search", data="query=x", content_type="text/plain"), 415)
    problem(api.post("/api/v1/search", data=b"\xff\xfe{", content_type="application/json"), 400)
    assert nothing_stored(faq_kb)


def test_radar_limits(served, people, token_for, settings):
    api = token_for(people["alice"])
    settings.RADAR_MAX_LINES = 3
    body = problem(api.post("/api/v1/radar", {"documents": ["a", "b", "c", "d"], "query": "x"}, format="json"), 413)
    assert body["limit"] == "RADAR_MAX_LINES"
    problem(api.post("/api/v1/radar", {"documents": [], "query": "x"}, format="json"), 400)
    problem(api.post("/api/v1/radar", {"documents": ["a", 3], "query": "x"}, format="json"), 400)
    problem(api.post("/api/v1/radar", {"documents": "a\nb", "query": "x"}, format="json"), 400)
    # Each refusal is recorded (issue 9, defect 4), and nothing ran.
    refused = AuditEvent.objects.filter(action__startswith="radar.").order_by("seq")
    assert [(e.action, e.outcome) for e in refused] == [("radar.failed", "rejected")] * 4
    assert [e.detail["rejected"] for e in refused] == [
        "RADAR_MAX_LINES", "documents_empty", "invalid_request", "invalid_request"]


def test_embeddings_limits_and_types(served, people, token_for, settings):
    api = token_for(people["alice"])
    settings.EMBEDDINGS_MAX_INPUTS = 2
    assert problem(api.post("/v1/embeddings", {"input": ["a", "b", "c"]}, format="json"), 413)["limit"] == \
        "EMBEDDINGS_MAX_INPUTS"
    problem(api.post("/v1/embeddings", {"input": [[1, 2, 3]]}, format="json"), 400)
    problem(api.post("/v1/embeddings", {"input": ""}, format="json"), 400)
    problem(api.post("/v1/embeddings", {"input": "x", "dimensions": 100000}, format="json"), 400)
    problem(api.post("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, format="json"), 400)
    refused = AuditEvent.objects.filter(action="embeddings.create").order_by("seq")
    assert [e.outcome for e in refused] == ["rejected"] * 5
    assert [e.detail["rejected"] for e in refused] == [
        "EMBEDDINGS_MAX_INPUTS", "input_not_strings", "input_empty_string", "dimensions_out_of_range",
        "invalid_request"]


def test_oversized_body_is_413_or_400_and_stores_nothing(faq_kb, people, token_for, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = token_for(people["carol"]).post(f"/api/v1/kbs/{faq_kb.pk}/documents",
                                               {"documents": ["x" * 2000]}, format="json")
    assert response.status_code == 413 and response["Content-Type"] == "application/problem+json"
    assert faq_kb.documents.count() == 60
    refused = AuditEvent.objects.get(outcome="rejected")  # recorded like every refusal (issue 9, defect 4)
    assert (refused.action, refused.detail["rejected"], refused.username, refused.resource_id) == (
        "doc.import", "DATA_UPLOAD_MAX_MEMORY_SIZE", "carol", str(faq_kb.pk))


@pytest.mark.parametrize("name,data,words", [
    ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"), "not UTF-8"),
    ("binary.txt", b"abc\x00def", "binary"),
    ("broken.jsonl", b'{"text": "ok"}\n{oops\n', "line 2 is not valid JSON"),
    ("wrong.jsonl", b'{"title": "no text"}\n', '"text"'),
    ("notes.pdf", b"%PDF-1.4", "unsupported file type"),
    ("empty.txt", b"\n\n", "no entries"),
    ("qa.csv", b"question,answer\nWhere is the VPN guide?,On the intranet\n", 'none is headed "text"'),
])
def test_upload_rejects_malformed_files_and_stores_nothing(faq_kb, people, client, name, data, words):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(people["carol"])
    before = AuditEvent.objects.count()
    response = client.post(f"/kbs/{faq_kb.pk}/upload/", {"file": SimpleUploadedFile(name, data)})
    assert response.status_code == 400
    assert words in response.json()["detail"]
    assert faq_kb.documents.count() == 60 and AuditEvent.objects.count() == before + 1
    refused = AuditEvent.objects.latest("id")
    assert (refused.action, refused.outcome, refused.detail["rejected"], refused.detail["source"]) == (
        "doc.import", "rejected", "malformed_file", name)


def test_upload_error_speaks_the_page_language(faq_kb, people, client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(people["carol"])
    response = client.post(f"/kbs/{faq_kb.pk}/upload/",
                           {"file": SimpleUploadedFile("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"))},
                           HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    assert response.status_code == 400
    assert response.json()["detail"] == "文件不是 UTF-8 文本（第 1 行有无效字节）；请另存为 UTF-8 后重试"


def test_csv_columns():
    from search.parsing import parse_entries

    def texts(data):
        return [(e.line, e.text) for e in parse_entries(data, "csv", max_entries=100, max_chars=100)]

    assert texts(b"id,text\n1,First entry\n2,Second\n") == [(2, "First entry"), (3, "Second")]
    assert texts(b"First entry\nSecond\n") == [(1, "First entry"), (2, "Second")]  # one column, no header


def test_upload_over_the_size_limit(faq_kb, people, client, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.KB_MAX_UPLOAD_BYTES = 100
    client.force_login(people["carol"])
    response = client.post(f"/kbs/{faq_kb.pk}/upload/", {"file": SimpleUploadedFile("big.txt", b"line\n" * 50)})
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert faq_kb.documents.count() == 60


@pytest.mark.django_db(transaction=True)
def test_upload_imports_skips_duplicates_and_audits(faq_kb, people, client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(people["carol"])
    existing = faq_kb.documents.first().text
    csv_bytes = f'text,source\n"{existing}",faq\nThe cafeteria closes at 3 pm.,ops\n'.encode()
    response = client.post(f"/kbs/{faq_kb.pk}/upload/", {"file": SimpleUploadedFile("more.csv", csv_bytes)})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert response["Location"] == response.json()["url"]
    call_command("db_worker", "--batch", "--no-startup-delay", verbosity=0)
    job = client.get(response["Location"]).json()
    assert (job["status"], job["added"], job["skipped_duplicates"]) == ("succeeded", 1, 1)
    assert job["message"] == "1 entry added, 1 duplicate skipped."
    event = AuditEvent.objects.filter(action="doc.import").latest("id")
    assert event.detail["added"] == 1 and event.username == "carol" and event.kb_id == faq_kb.pk


def test_searcher_cannot_upload_or_delete(faq_kb, people, client, token_for):
    client.force_login(people["alice"])
    assert client.post(f"/kbs/{faq_kb.pk}/delete/").status_code == 403
    assert token_for(people["alice"]).delete(f"/api/v1/kbs/{faq_kb.pk}").status_code == 404
    assert KnowledgeBase.objects.filter(pk=faq_kb.pk).exists()


def test_kb_and_document_api_lifecycle(served, people, token_for, tenants):
    api = token_for(people["carol"])
    created = api.post("/api/v1/kbs", {"name": "Policies"}, format="json")
    assert created.status_code == 201
    kb_id = created.json()["id"]
    assert api.post("/api/v1/kbs", {"name": "Policies"}, format="json").status_code == 400
    added = api.post(f"/api/v1/kbs/{kb_id}/documents",
                     {"documents": ["Travel must be booked through the portal.", {"text": "Gifts over 50 EUR are declared."},
                                    "Travel must be booked through the portal."]}, format="json")
    assert added.status_code == 201 and added.json()["added"] == 2 and added.json()["skipped_duplicates"] == 1
    listed = api.get(f"/api/v1/kbs/{kb_id}/documents").json()
    assert listed["count"] == 2
    found = api.post("/api/v1/search", {"kb": kb_id, "query": "who books my flights", "top_k": 1}, format="json")
    assert found.json()["results"][0]["text"].startswith("Travel")
    doc_id = listed["results"][0]["id"]
    assert api.delete(f"/api/v1/kbs/{kb_id}/documents/{doc_id}").status_code == 204
    again = api.post("/api/v1/search", {"kb": kb_id, "query": "who books my flights", "top_k": 5}, format="json")
    assert [r["id"] for r in again.json()["results"]] != [doc_id] and len(again.json()["results"]) == 1
    assert api.get(f"/api/v1/kbs/{kb_id}").json()["line_count"] == 1
    assert api.delete(f"/api/v1/kbs/{kb_id}").status_code == 204
    assert Document.objects.count() == 0
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    for action in ("kb.create", "doc.import", "doc.delete", "kb.delete"):
        assert action in actions


def test_kb_import_command(served, people, tenants, tmp_path, capsys):
    source = tmp_path / "entries.jsonl"
    source.write_text('{"text": "Printers are on floor 2."}\n"Parking permits come from facilities."\n')
    call_command("kb_import", "--tenant", "acme", "--kb", "Ops", str(source))
    assert "2 entries added" in capsys.readouterr().out
    assert KnowledgeBase.objects.get(name="Ops").documents.count() == 2
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe bad")
    with pytest.raises(CommandError, match="not UTF-8"):
        call_command("kb_import", "--tenant", "acme", "--kb", "Ops", str(bad))
    with pytest.raises(CommandError, match="no tenant"):
        call_command("kb_import", "--tenant", "nope", "--kb", "Ops", str(source))


def test_refusals_are_audited_as_denied_or_failed(faq_kb, people, token_for, bearer, tenants):
    alice = token_for(people["alice"])
    assert alice.post("/api/v1/kbs", {"name": "mine"}, format="json").status_code == 404
    denied = AuditEvent.objects.get(action="access.denied")
    assert (denied.outcome, denied.username, denied.resource_id, denied.tenant) == (
        "denied", "alice", "kb.manage", tenants["acme"])
    bob = token_for(people["bob"], "globex")
    assert bob.post("/api/v1/search", {"kb": faq_kb.pk, "query": "x"}, format="json").status_code == 404
    probe = AuditEvent.objects.get(action="access.not_found")
    assert (probe.tenant, probe.username, probe.outcome) == (tenants["globex"], "bob", "denied")
    assert bearer("sp_not-a-token").get("/api/v1/kbs").status_code == 401
    assert AuditEvent.objects.get(action="auth.token_failed").detail["reason"] == "invalid token"
    assert alice.post("/api/v1/search", {"kb": "FAQ", "query": ""}, format="json").status_code == 400
    failed = AuditEvent.objects.get(action="search.failed")
    assert failed.outcome == "rejected" and failed.detail == {"rejected": "query_empty", "reason": "query is empty"}


def test_page_refusal_is_audited(faq_kb, people, client):
    client.force_login(people["alice"])
    assert client.post(f"/kbs/{faq_kb.pk}/delete/").status_code == 403
    assert AuditEvent.objects.filter(action="access.denied", resource_id="kb.manage", username="alice").exists()
