"""File imports as background jobs: the request checks and queues (202 and the
job's address), the task worker (`manage.py db_worker`, run here in-process
with --batch) imports, and the job resource shows how it went. The audit has
the submission and the end, both tied to who asked and from where."""
import re
import threading

import pytest
from django.core.management import call_command
from django.db import connection

from audit.models import AuditEvent
from search.models import Document, ImportJob
from tests.search.portal_fixtures import faq_kb, people, served, token_for  # noqa: F401

LINES = "The canteen opens at noon.\nParking permits are renewed in January.\nThe lobby opens at seven.\n"


def _upload(api, kb, content: bytes, name="notes.txt", **extra):
    return api.post(f"/api/v1/kbs/{kb.pk}/imports", {"file": _named(content, name), **extra}, format="multipart")


def _named(content: bytes, name: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def _work():
    call_command("db_worker", "--batch", "--no-startup-delay", verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_an_upload_is_queued_then_imported_by_the_worker(faq_kb, people, token_for):  # noqa: F811
    api = token_for(people["carol"])
    before = Document.objects.filter(knowledge_base=faq_kb).count()
    response = _upload(api, faq_kb, LINES.encode())
    assert response.status_code == 202, response.content
    job = response.json()
    assert response["Location"] == job["url"] == f"/api/v1/imports/{job['id']}"
    assert job["status"] == "queued" and job["total"] == 3 and job["done"] == 0
    assert Document.objects.filter(knowledge_base=faq_kb).count() == before  # nothing embedded in the request
    submitted = AuditEvent.objects.get(action="doc.import.submitted")
    assert submitted.detail["job"] == job["id"] and submitted.username == "carol"

    _work()

    done = api.get(job["url"]).json()
    assert done["status"] == "succeeded", done
    assert (done["added"], done["skipped_duplicates"], done["done"]) == (3, 0, 3)
    assert done["started_at"] and done["finished_at"]
    assert Document.objects.filter(knowledge_base=faq_kb).count() == before + 3
    assert ImportJob.objects.get(pk=job["id"]).payload is None  # the file is not kept
    finished = AuditEvent.objects.get(action="doc.import", kb_id=faq_kb.pk, detail__source="notes.txt")
    assert finished.outcome == "success" and finished.username == "carol"
    assert finished.request_id == submitted.request_id and finished.auth_method == "token"
    hits = api.post("/api/v1/search", {"kb": faq_kb.pk, "query": "when does the canteen open", "top_k": 1},
                    format="json").json()["results"]
    assert hits[0]["text"] == "The canteen opens at noon."


@pytest.mark.django_db(transaction=True)
def test_a_refused_file_answers_at_once_and_queues_nothing(faq_kb, people, token_for):  # noqa: F811
    api = token_for(people["carol"])
    response = _upload(api, faq_kb, b"\xff\xfe not text", name="notes.txt")
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    assert not ImportJob.objects.exists()
    assert AuditEvent.objects.filter(action="doc.import", outcome="rejected").exists()
    no_file = api.post(f"/api/v1/kbs/{faq_kb.pk}/imports", {}, format="multipart")
    assert no_file.status_code == 400 and not ImportJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_job_that_fails_says_why_and_is_audited(faq_kb, people, token_for):  # noqa: F811
    api = token_for(people["carol"])
    job = _upload(api, faq_kb, LINES.encode()).json()
    type(faq_kb).objects.filter(pk=faq_kb.pk).update(model_id="another/model")  # changed while queued
    _work()
    failed = api.get(job["url"]).json()
    assert failed["status"] == "failed" and "another/model" in failed["error"]
    assert ImportJob.objects.get(pk=job["id"]).payload is None
    event = AuditEvent.objects.get(action="doc.import.failed")
    assert event.outcome == "failure" and event.detail["error"] == "ModelMismatch"


@pytest.mark.django_db(transaction=True)
def test_a_searcher_may_read_a_job_but_not_submit_one(faq_kb, people, token_for):  # noqa: F811
    job = _upload(token_for(people["carol"]), faq_kb, LINES.encode()).json()
    searcher = token_for(people["alice"])
    assert searcher.get(job["url"]).status_code == 200
    assert _upload(searcher, faq_kb, LINES.encode()).status_code in (403, 404)
    assert token_for(people["bob"], "globex").get(job["url"]).status_code == 404


# --- the page: upload, then the import's progress --------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_page_upload_queues_and_the_page_follows_the_import(faq_kb, people, client):  # noqa: F811
    """The page's upload answers 202 with the import's address at once; that
    address (what the page's bar reads) and the knowledge base's page show
    the import waiting, running with its count, and finished with its result."""
    client.force_login(people["carol"])
    response = client.post(f"/kbs/{faq_kb.pk}/upload/", {"file": _named(LINES.encode(), "notes.txt")})
    assert response.status_code == 202, response.content
    state = response.json()
    assert response["Location"] == state["url"] == f"/kbs/{faq_kb.pk}/imports/{state['id']}/"
    assert (state["status"], state["total"], state["done"]) == ("queued", 3, 0)
    assert state["message"] == "Waiting for the import worker…"
    page = client.get(f"/kbs/{faq_kb.pk}/").content.decode()
    assert f'data-job-url="{state["url"]}"' in page  # a reloaded page goes on following it
    assert "Waiting for the import worker…" in page

    ImportJob.objects.filter(pk=state["id"]).update(status="running", done=2)  # as the worker reports it
    assert client.get(state["url"]).json()["message"] == "Embedding: 2 of 3 entries…"
    assert 'value="70"' in client.get(f"/kbs/{faq_kb.pk}/").content.decode()
    ImportJob.objects.filter(pk=state["id"]).update(status="queued", done=0)

    _work()

    finished = client.get(state["url"]).json()
    assert (finished["status"], finished["added"], finished["skipped_duplicates"]) == ("succeeded", 3, 0)
    assert finished["message"] == "3 entries added, 0 duplicates skipped."
    page = client.get(f"/kbs/{faq_kb.pk}/").content.decode()
    assert "data-job-url" not in page
    assert re.search(r'<tr data-status="succeeded"><td class="source">notes.txt</td>.*3 entries added', page)


@pytest.mark.django_db(transaction=True)
def test_a_failed_import_shows_as_an_error_on_the_page(faq_kb, people, client):  # noqa: F811
    client.force_login(people["carol"])
    state = client.post(f"/kbs/{faq_kb.pk}/upload/", {"file": _named(LINES.encode(), "notes.txt")}).json()
    type(faq_kb).objects.filter(pk=faq_kb.pk).update(model_id="another/model")
    _work()
    failed = client.get(state["url"]).json()
    assert failed["status"] == "failed" and failed["message"].startswith("Import failed: ")
    assert "another/model" in failed["message"]
    assert '<tr data-status="failed">' in client.get(f"/kbs/{faq_kb.pk}/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_an_import_is_read_only_through_its_own_knowledge_base_and_tenant(faq_kb, people, client):  # noqa: F811
    from portal.scope import Scope
    from search.services import kb_create

    client.force_login(people["carol"])
    state = client.post(f"/kbs/{faq_kb.pk}/upload/", {"file": _named(LINES.encode(), "notes.txt")}).json()
    other = kb_create(scope=Scope(tenant=faq_kb.tenant, user=people["carol"]), name="Other")
    assert client.get(f"/kbs/{other.pk}/imports/{state['id']}/").status_code == 404
    assert client.post(state["url"]).status_code == 405
    client.force_login(people["alice"])  # a searcher of the tenant may watch it
    assert client.get(state["url"]).status_code == 200
    client.force_login(people["bob"])  # another tenant's user may not
    assert client.get(state["url"]).status_code in (403, 404)


@pytest.mark.django_db(transaction=True)
def test_the_import_state_speaks_the_page_language(faq_kb, people, client):  # noqa: F811
    client.force_login(people["carol"])
    state = client.post(f"/kbs/{faq_kb.pk}/upload/", {"file": _named(LINES.encode(), "notes.txt")},
                        HTTP_ACCEPT_LANGUAGE="zh-CN").json()
    assert state["message"] == "正在等待导入进程…"
    page = client.get(f"/kbs/{faq_kb.pk}/", HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    assert "最近的导入" in page and "Recent imports" not in page


# --- the import itself: a batch at a time, all or nothing ---------------------------------

SIX = "".join(f"Entry number {n} of the batch test.\n" for n in range(1, 7))


def _read_elsewhere(job_id, kb):
    """(job's done count, the knowledge base's stored entries) as another connection sees them."""
    seen = []

    def read():
        try:
            seen.append((ImportJob.objects.get(pk=job_id).done, Document.objects.filter(knowledge_base=kb).count()))
        finally:
            connection.close()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(30)
    return seen[0]


@pytest.mark.django_db(transaction=True)
def test_progress_is_seen_while_the_import_runs_and_its_rows_only_at_the_end(
        faq_kb, people, token_for, served, settings, monkeypatch):  # noqa: F811
    """On PostgreSQL the rows go in a batch at a time in one transaction: other
    connections see the job's count rise and no new row until it commits."""
    settings.KB_IMPORT_BATCH = settings.KB_IMPORT_STORE_BATCH = 2
    job = _upload(token_for(people["carol"]), faq_kb, SIX.encode()).json()
    before = Document.objects.filter(knowledge_base=faq_kb).count()
    observed, embed = [], served.embed

    def watching(texts, **options):
        if options.get("kind") == "document":
            observed.append(_read_elsewhere(job["id"], faq_kb))
        return embed(texts, **options)

    monkeypatch.setattr(served, "embed", watching)
    _work()
    assert observed == [(0, before), (2, before), (4, before)]
    assert Document.objects.filter(knowledge_base=faq_kb).count() == before + 6


@pytest.mark.django_db(transaction=True)
def test_an_import_that_fails_in_a_later_batch_stores_nothing(faq_kb, people, served, settings, monkeypatch):  # noqa: F811
    from portal.scope import Scope
    from search.parsing import parse_entries
    from search.services import documents_import

    settings.KB_IMPORT_BATCH = settings.KB_IMPORT_STORE_BATCH = 2
    before = Document.objects.filter(knowledge_base=faq_kb).count()
    calls, embed = [], served.embed

    def failing(texts, **options):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("the model failed on the third batch")
        return embed(texts, **options)

    monkeypatch.setattr(served, "embed", failing)
    entries = parse_entries(SIX.encode(), "txt", max_entries=100, max_chars=1000)
    with pytest.raises(RuntimeError):
        documents_import(scope=Scope(tenant=faq_kb.tenant, user=people["carol"]), kb=faq_kb, entries=entries)
    assert calls == [2, 2, 2]
    assert Document.objects.filter(knowledge_base=faq_kb).count() == before
    assert not AuditEvent.objects.filter(action="doc.import", outcome="success", detail__added=6).exists()


@pytest.mark.django_db(transaction=True)
def test_batches_skip_what_is_stored_and_what_the_file_repeats(faq_kb, people, settings):  # noqa: F811
    from portal.scope import Scope
    from search.parsing import parse_entries
    from search.services import documents_import

    settings.KB_IMPORT_BATCH = settings.KB_IMPORT_STORE_BATCH = 2
    stored = faq_kb.documents.order_by("id").values_list("text", flat=True)[:2]
    lines = ["New line one.", stored[0], "New line one.", "New line two.", stored[1], "New line three."]
    entries = parse_entries(("\n".join(lines) + "\n").encode(), "txt", max_entries=100, max_chars=1000)
    result = documents_import(scope=Scope(tenant=faq_kb.tenant, user=people["carol"]), kb=faq_kb, entries=entries)
    assert (result.added, result.skipped, result.skipped_lines) == (3, 3, [2, 3, 5])
    for text in ("New line one.", "New line two.", "New line three.", stored[0]):
        assert faq_kb.documents.filter(text=text).count() == 1


# --- a worker killed during an import ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_import_whose_worker_stopped_reporting_is_ended_once_and_audited(faq_kb, people, token_for, client,
                                                                             settings):  # noqa: F811
    from datetime import timedelta

    from django.utils import timezone

    api = token_for(people["carol"])
    lost, alive = (_upload(api, faq_kb, LINES.encode(), name=name).json() for name in ("lost.txt", "alive.txt"))
    now = timezone.now()
    stale = now - timedelta(seconds=settings.IMPORT_JOB_STALE_SECONDS + 5)
    # As a worker leaves them: claimed, reported, then killed (its rows never committed) or still working.
    ImportJob.objects.filter(pk=lost["id"]).update(status="running", started_at=stale, heartbeat_at=stale, done=2)
    ImportJob.objects.filter(pk=alive["id"]).update(status="running", started_at=stale, heartbeat_at=now, done=1)

    ended = api.get(lost["url"]).json()
    assert ended["status"] == "failed" and "stopped before the import ended" in ended["error"]
    assert ImportJob.objects.get(pk=lost["id"]).payload is None
    assert api.get(alive["url"]).json()["status"] == "running"
    client.force_login(people["carol"])
    page_state = client.get(f"/kbs/{faq_kb.pk}/imports/{lost['id']}/").json()
    assert page_state["message"].startswith("Import failed: the import worker stopped")
    records = AuditEvent.objects.filter(action="doc.import.failed")
    assert [(e.detail["job"], e.detail["error"], e.username) for e in records] == [(lost["id"], "WorkerLost", "carol")]


@pytest.mark.django_db(transaction=True)
def test_the_workers_next_task_ends_a_lost_import(faq_kb, people, token_for, settings):  # noqa: F811
    from datetime import timedelta

    from django.utils import timezone

    api = token_for(people["carol"])
    lost = _upload(api, faq_kb, LINES.encode(), name="lost.txt").json()
    stale = timezone.now() - timedelta(seconds=settings.IMPORT_JOB_STALE_SECONDS + 5)
    ImportJob.objects.filter(pk=lost["id"]).update(status="running", started_at=stale, heartbeat_at=stale)
    fresh = _upload(api, faq_kb, b"A line sent after the worker came back.\n", name="next.txt").json()
    _work()
    assert ImportJob.objects.get(pk=lost["id"]).status == "failed"
    assert ImportJob.objects.get(pk=fresh["id"]).status == "succeeded"
    assert AuditEvent.objects.filter(action="doc.import.failed", detail__error="WorkerLost").count() == 1
