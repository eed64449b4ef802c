"""Issue 9, the import and refusal defects of the user trial: racing uploads,
refusals that left no audit trace, the silently cut query, limit messages in
the page's language, upload errors, deleting an entry, the source file of an
entry, and NUL characters through the API."""
import re
import threading
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from audit.ledger.models import AuditEvent
from search.models import Document, ImportJob, KnowledgeBase
from tests.search.portal_fixtures import faq_kb, people, served, token_for  # noqa: F401

LINES = ["The VPN token is renewed every 90 days.", "Printers are on floor 2.",
         "Parking permits come from facilities.", "The cafeteria closes at 3 pm."]


def refusals(**filters):
    return list(AuditEvent.objects.filter(outcome="rejected", **filters).order_by("seq"))


# --- 1. a double-clicked upload: two imports of one file at once -------------------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_uploads_of_one_file_both_succeed(served, tenants, people, monkeypatch):
    """Two page uploads at once both answer 202 and queue a job each; two
    workers running those jobs at the same moment both succeed, and each line
    is stored once (the second skips what the first stored)."""
    from portal.scope import Scope
    from search.models import ImportJob
    from search.services import import_job_run, kb_create

    kb = kb_create(scope=Scope(tenant=tenants["acme"], user=people["carol"]), name="Race")
    data = ("\n".join(LINES) + "\n").encode()
    clients = [Client(), Client()]
    for client in clients:
        client.force_login(people["carol"])
    answers = [None, None]

    def upload(n):
        try:
            answers[n] = clients[n].post(f"/kbs/{kb.pk}/upload/", {"file": SimpleUploadedFile("faq.txt", data)})
        except Exception as exc:  # the old code's IntegrityError escaped as a 500
            answers[n] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [getattr(a, "status_code", a) for a in answers] == [202, 202]
    jobs = sorted(a.json()["id"] for a in answers)
    assert sorted(ImportJob.objects.filter(knowledge_base=kb).values_list("id", flat=True)) == jobs

    if connection.vendor != "postgresql":
        # SQLite embeds before it writes: make both jobs read the stored
        # digests before either writes, holding each at the model (after that
        # read) until the other has arrived there too. (On PostgreSQL the
        # second import waits for the first's lock before it reads.)
        arrived = threading.Barrier(2, timeout=60)
        embed = served.embed

        def embed_together(texts, **options):
            if options.get("kind") == "document":
                arrived.wait()
            return embed(texts, **options)

        monkeypatch.setattr(served, "embed", embed_together)
    failures = []

    def work(job_id):
        try:
            import_job_run(job_id)
        except Exception as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    finished = ImportJob.objects.filter(knowledge_base=kb)
    assert sorted(finished.values_list("status", "added", "skipped_duplicates")) == [
        ("succeeded", 0, len(LINES)), ("succeeded", len(LINES), 0)]
    for line in LINES:
        assert Document.objects.filter(knowledge_base=kb, text=line).count() == 1
    imports = AuditEvent.objects.filter(action="doc.import").order_by("seq")
    assert [e.outcome for e in imports] == ["success", "success"]
    assert [(e.detail["added"], e.detail["skipped_duplicates"]) for e in imports] == [(4, 0), (0, 4)]
    assert [e.kb_lines for e in imports] == [4, 4]


def _work_when_queued(kb) -> None:
    """Run the task worker once the page's upload has queued its import (in a
    thread: Playwright's loop owns the test's)."""
    from django_tasks_db.management.commands.db_worker import Worker

    try:
        for _ in range(600):
            if ImportJob.objects.filter(knowledge_base=kb).exists():
                break
            time.sleep(0.1)
        # db_worker's own Worker, without the command's signal handlers (main thread only).
        Worker(queue_names=["default"], interval=0.1, batch=True, backend_name="default", startup_delay=False,
               max_tasks=None, worker_id="test-worker", excluded_queue_names=[]).run()
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_in_a_browser_a_double_click_sends_one_upload_and_an_error_looks_like_one(
        served, tenants, people, live_server, tmp_path, settings):
    """Chromium on the real page: the button is disabled while a request is in
    flight, so a double click sends one upload; a refused file shows as an
    error (red, role="alert", a capitalised sentence), and the button comes back."""
    from playwright.sync_api import sync_playwright

    from portal.scope import Scope
    from search.services import kb_create
    from tests.audit.test_browser import CHROMIUM, launch_chromium

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: apt-get install -y chromium"
    kb = kb_create(scope=Scope(tenant=tenants["acme"], user=people["carol"]), name="Clicks")
    good, bad = tmp_path / "faq.txt", tmp_path / "latin1.txt"
    good.write_text("\n".join(LINES) + "\n")
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    session = Client()
    session.force_login(people["carol"])
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "url": live_server.url,
                                  "value": session.cookies[settings.SESSION_COOKIE_NAME].value}])
            page = context.new_page()
            uploads = []
            page.on("request", lambda r: uploads.append(r.url) if r.method == "POST" and "/upload/" in r.url else None)
            page.goto(f"{live_server.url}/kbs/{kb.pk}/")
            button = page.locator("#upload-form button[type=submit]")

            page.set_input_files("#id_file", str(bad))
            button.dblclick()
            error = page.locator("#upload-message.upload-error")
            error.wait_for(timeout=30_000)
            assert error.get_attribute("role") == "alert"
            assert error.inner_text().startswith("The file is not UTF-8 text (invalid byte at line 1)")
            assert error.evaluate("e => getComputedStyle(e).color") == "rgb(179, 38, 30)"  # --bad
            assert button.is_enabled() and len(uploads) == 1

            page.set_input_files("#id_file", str(good))
            button.dblclick()
            assert button.is_disabled()
            worker = threading.Thread(target=_work_when_queued, args=(kb,))  # the task worker, here
            worker.start()
            page.wait_for_selector(f"text={LINES[1]}", timeout=60_000)  # the page reloads with the entries
            worker.join(60)
            assert len(uploads) == 2
            assert "4 entries added, 0 duplicates skipped." in page.locator("#imports").inner_text()

            asked = []
            page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
            page.locator('form[action*="/documents/"] button').first.click()
            assert asked == ["Delete this entry?"]
        finally:
            browser.close()
    assert kb.documents.count() == len(LINES)  # the delete was not confirmed
    assert AuditEvent.objects.filter(action="doc.import").count() == 2  # the refused file and one import


# --- 4. refused requests leave a trace (outcome "rejected"), nothing stored --------------


def test_refused_searches_are_recorded_as_rejected_with_the_limit(faq_kb, people, client, token_for):
    client.force_login(people["alice"])
    assert client.post("/", {"kb": faq_kb.pk, "query": "x" * 5000, "top_k": 5}).status_code == 413
    api = token_for(people["alice"])
    assert api.post("/api/v1/search", {"kb": "FAQ", "query": "y" * 3000}, format="json").status_code == 413
    assert api.post("/api/v1/search", {"kb": "FAQ", "query": 42}, format="json").status_code == 400
    assert api.post("/api/v1/search", {"kb": "FAQ", "query": "x", "top_k": 10_000},
                    format="json").status_code == 400
    page, too_long, not_text, top_k = refusals(action="search.failed")
    assert page.detail == {"rejected": "SEARCH_MAX_QUERY_CHARS",
                           "reason": "The query is too long: 5000 characters; the limit is 2000."}
    assert (page.username, page.kb_id, page.query) == ("alice", faq_kb.pk, "x" * 2000)
    assert too_long.detail["rejected"] == "SEARCH_MAX_QUERY_CHARS" and "3000 characters" in too_long.detail["reason"]
    assert not_text.detail["rejected"] == "invalid_request" and "query" in not_text.detail["reason"]
    assert top_k.detail["rejected"] == "SEARCH_MAX_TOP_K"
    assert not AuditEvent.objects.filter(action__in=["search.submitted", "search.completed"]).exists()
    assert not AuditEvent.objects.filter(outcome="failure").exists()  # refused is not failed


def test_a_page_form_refused_before_the_service_is_recorded(faq_kb, people, client):
    client.force_login(people["alice"])
    assert client.post("/", {"kb": faq_kb.pk, "query": "vpn", "top_k": 7}).status_code == 400
    assert client.post("/radar/", {"documents": "a", "query": "vpn", "top_k": "many"}).status_code == 400
    search, radar = refusals()
    assert (search.action, search.detail) == ("search.failed", {"rejected": "invalid_request",
                                                                "reason": "invalid form fields: top_k"})
    assert (radar.action, radar.detail["rejected"], radar.username) == ("radar.failed", "invalid_request", "alice")


def test_refused_radar_page_request_is_recorded(served, people, client, settings):
    settings.RADAR_MAX_LINES = 2
    client.force_login(people["alice"])
    response = client.post("/radar/", {"documents": "a\nb\nc", "query": "letters", "top_k": 3})
    assert response.status_code == 413
    (event,) = refusals(action="radar.failed")
    assert event.detail == {"rejected": "RADAR_MAX_LINES", "reason": "3 lines; the limit is 2"}
    assert event.query == "letters" and not AuditEvent.objects.filter(action="radar.submitted").exists()


def test_refused_uploads_are_recorded_and_store_nothing(faq_kb, people, client, token_for, settings):
    client.force_login(people["carol"])
    assert client.post(f"/kbs/{faq_kb.pk}/upload/",
                       {"file": SimpleUploadedFile("notes.txt", "caf\xe9\n".encode("latin-1"))}).status_code == 400
    settings.KB_MAX_UPLOAD_BYTES = 10
    assert client.post(f"/kbs/{faq_kb.pk}/upload/",
                       {"file": SimpleUploadedFile("big.txt", b"line\n" * 10)}).status_code == 413
    assert client.post(f"/kbs/{faq_kb.pk}/upload/", {}).status_code == 400
    api = token_for(people["carol"])
    settings.KB_MAX_DOCUMENT_CHARS = 20
    assert api.post(f"/api/v1/kbs/{faq_kb.pk}/documents", {"documents": ["ok", "z" * 21]},
                    format="json").status_code == 413
    assert api.post(f"/api/v1/kbs/{faq_kb.pk}/documents", {"documents": "not a list"},
                    format="json").status_code == 400
    events = refusals(action="doc.import")
    assert [e.detail["rejected"] for e in events] == [
        "malformed_file", "KB_MAX_UPLOAD_BYTES", "no_file", "KB_MAX_DOCUMENT_CHARS", "invalid_request"]
    assert events[0].detail["reason"] == ("the file is not UTF-8 text (invalid byte at line 1); "
                                          "save it as UTF-8 and try again")
    assert events[0].detail["source"] == "notes.txt" and events[1].detail["reason"] == \
        "The file is 50 bytes; the limit is 10."
    assert events[3].detail["reason"] == "entry 2 is 21 characters; the limit is 20"
    assert all((e.kb_id, e.username) == (faq_kb.pk, "carol") for e in events[:4])
    assert faq_kb.documents.count() == 60
    assert AuditEvent.objects.filter(action="doc.import", outcome="success").count() == 1  # the fixture's own


def test_kb_import_command_records_a_refused_file(served, people, tenants, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{oops\n')
    with pytest.raises(CommandError, match="line 2 is not valid JSON"):
        call_command("kb_import", "--tenant", "acme", "--kb", "Ops", str(bad))
    (event,) = refusals(action="doc.import")
    assert event.tenant == tenants["acme"] and event.kb_name == "Ops"
    assert event.detail["rejected"] == "malformed_file" and event.detail["source"] == "bad.jsonl"
    assert not KnowledgeBase.objects.filter(name="Ops").exists() and not Document.objects.exists()


# --- 5. a too long query is refused with a message, never cut silently ------------------


def test_a_too_long_query_is_not_cut_by_the_browser_and_the_page_says_so(faq_kb, people, client):
    client.force_login(people["alice"])
    form = client.get("/").content.decode()
    query_input = re.search(r'<input[^>]*name="query"[^>]*>', form).group(0)
    assert "maxlength" not in query_input  # the browser would cut a paste without a word
    response = client.post("/", {"kb": faq_kb.pk, "query": "why " * 1250, "top_k": 5})
    assert response.status_code == 413
    page = response.content.decode()
    assert "The query is too long: 4999 characters; the limit is 2000." in page
    assert not AuditEvent.objects.filter(action="search.submitted").exists()


# --- 6. the page's message is translated; the audit record keeps the code ----------------


def test_limit_message_in_chinese_and_the_record_keeps_the_code(faq_kb, people, client, token_for):
    client.force_login(people["alice"])
    response = client.post("/", {"kb": faq_kb.pk, "query": "x" * 5000, "top_k": 5},
                           HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    assert response.status_code == 413
    assert "查询过长：共 5000 个字符，上限为 2000 个字符。" in response.content.decode()
    api = token_for(people["alice"])
    body = api.post("/api/v1/search", {"kb": "FAQ", "query": "x" * 3000}, format="json",
                    HTTP_ACCEPT_LANGUAGE="zh-CN").json()
    assert body["detail"] == "查询过长：共 3000 个字符，上限为 2000 个字符。" and body["limit"] == "SEARCH_MAX_QUERY_CHARS"
    for event in refusals(action="search.failed"):
        assert event.detail["rejected"] == "SEARCH_MAX_QUERY_CHARS"
        assert event.detail["reason"].startswith("The query is too long: ")


# --- 8. upload errors, deleting an entry, the source file of each entry ------------------


def test_deleting_an_entry_asks_first_and_returns_to_its_page(faq_kb, people, client):
    client.force_login(people["carol"])
    html = client.get(f"/kbs/{faq_kb.pk}/?page=2").content.decode()
    forms = re.findall(r'<form method="post" action="/kbs/\d+/documents/(\d+)/delete/"([^>]*)>(.*?)</form>', html)
    assert len(forms) == 10  # 60 entries, 50 a page
    doc_id, attributes, inside = forms[0]
    assert 'data-confirm="Delete this entry?"' in attributes
    assert '<input type="hidden" name="page" value="2">' in inside
    response = client.post(f"/kbs/{faq_kb.pk}/documents/{doc_id}/delete/", {"page": "2"})
    assert response.status_code == 302 and response["Location"] == f"/kbs/{faq_kb.pk}/?page=2"
    assert not Document.objects.filter(pk=doc_id).exists()
    other = faq_kb.documents.first()
    odd = client.post(f"/kbs/{faq_kb.pk}/documents/{other.pk}/delete/", {"page": "²"})
    assert odd["Location"] == f"/kbs/{faq_kb.pk}/"


@pytest.mark.django_db(transaction=True)
def test_each_entry_shows_the_file_it_came_from(served, tenants, people, client, token_for, tmp_path):
    from portal.scope import Scope
    from search.services import kb_create

    kb = kb_create(scope=Scope(tenant=tenants["acme"], user=people["carol"]), name="Mixed")
    client.force_login(people["carol"])
    for name, text in (("hr.txt", "Holidays are booked in the HR portal.\n"),
                       ("it.txt", "Passwords expire every 90 days.\n")):
        assert client.post(f"/kbs/{kb.pk}/upload/", {"file": SimpleUploadedFile(name, text.encode())}).status_code == 202
        call_command("db_worker", "--batch", "--no-startup-delay", verbosity=0)
    assert token_for(people["carol"]).post(f"/api/v1/kbs/{kb.pk}/documents", {"documents": ["Badges at reception."]},
                                           format="json").status_code == 201
    source = tmp_path / "ops.jsonl"
    source.write_text('"Parking permits come from facilities."\n')
    call_command("kb_import", "--tenant", "acme", "--kb", "Mixed", str(source))
    names = dict(kb.documents.values_list("text", "source_name"))
    assert names == {"Holidays are booked in the HR portal.": "hr.txt", "Passwords expire every 90 days.": "it.txt",
                     "Badges at reception.": "api", "Parking permits come from facilities.": "ops.jsonl"}
    html = client.get(f"/kbs/{kb.pk}/").content.decode()
    for name in ("hr.txt", "it.txt", "ops.jsonl"):
        assert f'<span class="source-name">{name}</span> · line 1' in html


# --- 17. NUL characters through the API ---------------------------------------------------


def test_api_refuses_nul_characters_like_the_file_import(faq_kb, people, token_for):
    api = token_for(people["carol"])
    for documents, field in ((["fine", "bad\x00text"], "documents[1]"), ([{"text": "nul\x00"}], "documents[0]")):
        response = api.post(f"/api/v1/kbs/{faq_kb.pk}/documents", {"documents": documents}, format="json")
        assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
        assert response.json()["detail"].startswith(f"{field} contains a NUL character")
    assert faq_kb.documents.count() == 60
    assert not any("\x00" in text for text in Document.objects.values_list("text", flat=True))
    assert [e.detail["rejected"] for e in refusals(action="doc.import")] == ["nul_character"] * 2
