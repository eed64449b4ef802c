"""Range exports as background jobs (issue 12): asked for through the API or
the dashboard, written by the task worker (`manage.py db_worker`, run here
in-process), downloaded when done; each step audited, nothing half-written
offered, isolated by tenant."""
import datetime as dt
import os

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.ledger.models import AuditEvent, ExportJob
from tests.audit.conftest import load_tool

JOBS, EXPORT, PRESIGN = "/api/v1/audit/exports", "/api/v1/audit/export", "/api/v1/audit/export/presign"
RANGE = {"from": "2000-01-01", "to": "2100-01-01"}

pytestmark = pytest.mark.django_db(transaction=True)  # the worker runs what the request committed


@pytest.fixture(autouse=True)
def export_dir(settings, tmp_path):
    settings.AUDIT_EXPORT_DIR = str(tmp_path / "exports")
    return tmp_path / "exports"


@pytest.fixture
def officer_api(people, tenants, make_token, bearer):
    return bearer(make_token(people["officer"], tenants["acme"])[1])


def work():
    call_command("db_worker", "--batch", "--no-startup-delay", verbosity=0)


def submit(api, **values):
    return api.post(JOBS, {**RANGE, **values}, format="json")


def acme_events():
    return AuditEvent.objects.filter(tenant__slug="acme").count()


def test_an_export_is_queued_written_by_the_worker_then_downloaded(searches, officer_api, signing_key, export_dir):
    before = acme_events()
    response = submit(officer_api)
    assert response.status_code == 202, response.content
    job = response.json()
    assert response["Location"] == job["url"] == f"{JOBS}/{job['id']}"
    assert job["status"] == "queued" and job["total"] == before and job["download"] is None
    submitted = AuditEvent.objects.get(action="audit.export.submitted")
    assert submitted.tenant.slug == "acme" and submitted.username == "chris" and submitted.auth_method == "token"
    assert submitted.detail["job"] == job["id"] and submitted.detail["events"] == before

    in_range = acme_events()  # the submitted record too: it lies in the range
    work()
    state = officer_api.get(job["url"]).json()
    assert state["status"] == "succeeded" and state["done"] == in_range and state["percent"] == 100
    assert state["download"] == f"{JOBS}/{job['id']}/bundle"
    written = AuditEvent.objects.get(action="audit.export")
    # The worker's record names the officer and the request that asked, not the worker.
    assert written.username == "chris" and written.auth_method == "token"
    assert written.detail["via"] == "job" and written.detail["job"] == job["id"]
    assert written.detail["count"] == in_range
    assert written.detail["bundle_sha256"] == state["bundle_sha256"]

    download = officer_api.get(state["download"])
    assert download.status_code == 200
    data = b"".join(download.streaming_content)
    assert download["X-Audit-Export-SHA256"] == state["bundle_sha256"]
    assert 'filename="audit-acme-' in download["Content-Disposition"]
    result = load_tool().verify_bundle(data)
    assert result.ok and result.manifest["count"] == in_range and result.manifest["kind"] == "range"
    assert b"globex" not in data
    fetched = AuditEvent.objects.get(action="audit.export.download")
    assert fetched.detail == {"job": job["id"], "bundle_sha256": state["bundle_sha256"]}
    # Only the finished bundle lies in the folder, readable by the portal's user alone.
    files = list(export_dir.iterdir())
    assert len(files) == 1 and not files[0].name.endswith(".part")
    assert files[0].stat().st_mode & 0o077 == 0


def test_progress_is_written_while_the_bundle_is(searches, officer_api, signing_key, monkeypatch):
    from audit.ledger import export

    seen = []
    original = export.event_line

    def line_and_look(row):
        seen.append(ExportJob.objects.get().done)
        return original(row)

    monkeypatch.setattr(export, "PROGRESS_EVERY", 2)
    monkeypatch.setattr(export, "event_line", line_and_look)
    submit(officer_api)
    in_range = acme_events()
    work()
    assert seen == [n - n % 2 for n in range(in_range)]  # 0, 0, 2, 2, 4, 4…
    assert ExportJob.objects.get().done == in_range


def test_a_large_range_asked_for_in_one_request_is_queued(searches, officer_api, signing_key, settings, client):
    settings.AUDIT_EXPORT_SYNC_MAX_EVENTS = acme_events()
    assert officer_api.get(EXPORT, RANGE).status_code == 200  # at the limit: written in the request
    settings.AUDIT_EXPORT_SYNC_MAX_EVENTS = acme_events() - 1  # the export added one
    response = officer_api.get(EXPORT, RANGE)
    assert response.status_code == 202 and response["Location"] == response.json()["url"]
    assert ExportJob.objects.get().total == settings.AUDIT_EXPORT_SYNC_MAX_EVENTS + 1
    # A presigned URL's holder has no login to follow a job with: theirs is always written in the request.
    url = officer_api.post(PRESIGN, RANGE, format="json").json()["url"]
    assert client.get(url.split("testserver", 1)[1]).status_code == 200
    assert ExportJob.objects.count() == 1


def test_what_can_be_refused_at_once_is_refused_and_queues_nothing(searches, officer_api, signing_key):
    assert submit(officer_api, **{"from": "2020-02-01", "to": "2020-01-01"}).status_code == 400
    assert submit(officer_api, **{"from": "soon"}).status_code == 400
    bad_key = submit(officer_api, recipient="not-a-key")
    assert bad_key.status_code == 400 and bad_key.json()["detail"]
    assert officer_api.post(JOBS, {"to": "2020-01-01"}, format="json").status_code == 400
    assert not ExportJob.objects.exists() and not AuditEvent.objects.filter(action="audit.export.submitted").exists()


def test_without_a_signing_key_it_is_503_and_nothing_is_queued(searches, officer_api, no_signing_key):
    response = submit(officer_api)
    assert response.status_code == 503 and "AUDIT_SIGNING_KEY_FILE" in response.json()["detail"]
    assert not ExportJob.objects.exists()


def test_jobs_belong_to_their_tenants_officers(searches, officer_api, signing_key, people, tenants, make_token,
                                               bearer, client):
    job = submit(officer_api).json()
    work()
    searcher = bearer(make_token(people["searcher"], tenants["acme"])[1])
    for other in (bearer(make_token(people["globex_officer"], tenants["globex"])[1]), searcher):
        assert other.get(job["url"]).status_code == 404
        assert other.get(f"{job['url']}/bundle").status_code == 404
    assert submit(searcher).status_code == 404
    assert client.get(job["url"]).status_code == 401
    assert ExportJob.objects.count() == 1
    assert not AuditEvent.objects.filter(action="audit.export.download").exists()


def test_the_bundle_waits_for_the_worker_then_expires(searches, officer_api, signing_key, settings, export_dir):
    job = submit(officer_api).json()
    early = officer_api.get(f"{job['url']}/bundle")
    assert early.status_code == 409 and early["Content-Type"] == "application/problem+json"
    work()
    assert officer_api.get(f"{job['url']}/bundle").status_code == 200
    ExportJob.objects.filter(pk=job["id"]).update(
        finished_at=timezone.now() - dt.timedelta(hours=settings.AUDIT_EXPORT_KEEP_HOURS, minutes=1))
    gone = officer_api.get(f"{job['url']}/bundle")
    assert gone.status_code == 410 and "ask for the export again" in gone.json()["detail"]
    assert list(export_dir.iterdir()) == []
    state = officer_api.get(job["url"]).json()
    assert state["status"] == "succeeded" and state["download"] is None
    assert AuditEvent.objects.filter(action="audit.export.download").count() == 1


def test_a_failure_in_the_worker_ends_the_job_audited_and_leaves_no_file(searches, officer_api, signing_key,
                                                                         export_dir):
    from keystore.keys import get_keyring

    job = submit(officer_api).json()
    ring = get_keyring()
    saved, ring.signing_key_pem = ring.signing_key_pem, None  # the key went away after the request
    try:
        work()
    finally:
        ring.signing_key_pem = saved
    state = officer_api.get(job["url"]).json()
    assert state["status"] == "failed" and state["error"] == "SigningUnavailable"
    failed = AuditEvent.objects.get(action="audit.export", outcome="failure")
    assert failed.detail == {"via": "job", "job": job["id"], "error": "SigningUnavailable"}
    assert failed.username == "chris"
    assert list(export_dir.iterdir()) == []


def test_a_killed_workers_export_is_ended_once(searches, officer_api, signing_key, settings):
    job = submit(officer_api).json()
    stale = timezone.now() - dt.timedelta(seconds=settings.EXPORT_JOB_STALE_SECONDS + 1)
    ExportJob.objects.filter(pk=job["id"]).update(status="running", started_at=stale, heartbeat_at=stale)
    for _ in range(2):
        state = officer_api.get(job["url"]).json()
        assert state["status"] == "failed" and "export worker stopped" in state["error"]
    lost = AuditEvent.objects.filter(action="audit.export", outcome="failure")
    assert [event.detail["error"] for event in lost] == ["WorkerLost"]


def test_a_sealed_export_opens_with_the_auditors_key(searches, officer_api, signing_key, tmp_path):
    from keystore import envelope

    private = envelope.generate_recipient_key(tmp_path / "auditor.pem")
    public = envelope.recipient_public_text(private.public_key())
    job = submit(officer_api, recipient=public).json()
    work()
    state = officer_api.get(job["url"]).json()
    download = officer_api.get(state["download"])
    assert ".zip.sealed" in download["Content-Disposition"]
    data = b"".join(download.streaming_content)
    assert envelope.is_envelope(data)
    result = load_tool().verify_bundle(envelope.open_envelope(data, private))
    assert result.ok and result.manifest["tenant"]["slug"] == "acme"
    assert AuditEvent.objects.get(action="audit.export").detail["sealed_to"] == public


# --- the dashboard -------------------------------------------------------------

def test_the_dashboard_queues_an_export_and_offers_its_bundle(searches, people, login, signing_key):
    page = login(people["officer"])
    response = page.post("/audit/exports/", {"from": "2000-01-01", "to": "2100-01-01", "recipient": ""})
    assert response.status_code == 302 and response["Location"] == "/audit/dashboard/#exports"
    job = ExportJob.objects.get()
    body = page.get("/audit/dashboard/").content.decode()
    assert "The export is queued" in body and f'data-job-url="{JOBS}/{job.pk}"' in body
    assert 'data-status="queued"' in body and "/static/audit/exports.js" in body
    work()
    body = page.get("/audit/dashboard/").content.decode()
    assert f'href="{JOBS}/{job.pk}/bundle"' in body and 'data-status="succeeded"' in body
    assert "data-job-url" not in body
    assert AuditEvent.objects.get(action="audit.export.submitted").auth_method == "session"


def test_the_dashboard_refuses_a_bad_range_and_keeps_what_was_typed(searches, people, login, signing_key):
    page = login(people["officer"])
    response = page.post("/audit/exports/", {"from": "2020-02-01", "to": "2020-01-01", "recipient": ""}, follow=True)
    body = response.content.decode()
    assert "The export was not queued: &#x27;to&#x27; must be after &#x27;from&#x27;" in body
    assert 'value="2020-02-01"' in body and not ExportJob.objects.exists()


def test_only_officers_can_ask_for_an_export_from_the_page(searches, people, login, signing_key):
    assert login(people["searcher"]).post("/audit/exports/", RANGE).status_code == 403
    assert login(people["officer"]).get("/audit/exports/").status_code == 405
    assert not ExportJob.objects.exists()


def test_the_export_dir_is_created_by_the_worker(searches, officer_api, signing_key, export_dir):
    assert not export_dir.exists()
    submit(officer_api)
    work()
    assert export_dir.is_dir() and os.listdir(export_dir)
