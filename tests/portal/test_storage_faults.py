"""A database that cannot be written answers 503 quickly, never 500 or a
30-second hang; readiness reports an audit store that cannot be written
(issue 9, defect 14). Real SQLite file database: the write lock is held by a
second real connection; "disk full" is SQLite's own SQLITE_FULL, reached with
PRAGMA max_page_count."""
import contextlib
import sqlite3
import time

import pytest
from django.conf import settings
from django.db import connection

from audit.ledger.models import AuditEvent
from tests.search.conftest import minilm_dir, model_key, sealed_minilm, minilm_engine  # noqa: F401
from tests.search.portal_fixtures import faq_kb, people, served, token_for  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "correct-horse-battery"


@contextlib.contextmanager
def write_lock_held():
    """Another connection to the same database file holds the write lock."""
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextlib.contextmanager
def database_full():
    """The database may not grow by one page, and the audit table's last page
    is full: the next audit record needs a page there is none of (SQLITE_FULL,
    "database or disk is full")."""
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        # Fill the free pages and the audit table's last page with copies of
        # one real event (in a chain of their own), larger ones first.
        columns = [f.column for f in AuditEvent._meta.concrete_fields if f.column not in ("id",)]
        cursor.execute("SELECT MAX(id) FROM audit_auditevent")
        source = cursor.fetchone()[0]
        assert source is not None, "needs one real audit event to copy"
        chain, seq = 987654, 0
        for size in (16384, 4096, 1024, 256, 64, 16, 1):
            while True:
                seq += 1
                values = [{"chain": str(chain), "seq": str(seq), "detail": f"'{{\"f\": \"' || hex(zeroblob({size})) || '\"}}'"}
                          .get(c, c) for c in columns]
                try:
                    cursor.execute(f"INSERT INTO audit_auditevent ({', '.join(columns)}) "
                                   f"SELECT {', '.join(values)} FROM audit_auditevent WHERE id = %s", [source])
                except Exception as exc:
                    assert "full" in str(exc), exc
                    break
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA max_page_count = 2147483646")


def assert_storage_fault_logged(caplog, words: str):
    faults = [r.getMessage() for r in caplog.records if r.name == "portal.storage"]
    assert faults and words in faults[-1], faults


def test_busy_timeout_is_bounded_and_configurable():
    assert settings.DB_BUSY_TIMEOUT_MS <= 10_000
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] == settings.DB_BUSY_TIMEOUT_MS


def test_api_search_answers_503_quickly_while_the_database_is_held_locked(faq_kb, people, token_for):
    api = token_for(people["alice"])
    before = AuditEvent.objects.count()
    with write_lock_held():
        started = time.monotonic()
        response = api.post("/api/v1/search", {"kb": faq_kb.pk, "query": "reset my password", "top_k": 3},
                            format="json")
        elapsed = time.monotonic() - started
    assert response.status_code == 503, response.content
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert response["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert "results" not in body and "password" not in response.content.decode().lower().replace("reset", "")
    assert AuditEvent.objects.count() == before  # nothing half-written


def test_a_search_still_works_and_marks_the_token_used_when_the_database_is_free(faq_kb, people, token_for):
    from portal.models import ApiToken

    response = token_for(people["alice"]).post("/api/v1/search", {"kb": faq_kb.pk, "query": "reset my password"},
                                               format="json")
    assert response.status_code == 200 and response.json()["results"]
    assert ApiToken.objects.get().last_used_at is not None


def test_kb_create_page_and_api_answer_503_while_the_database_is_held_locked(client, tenants, people, token_for,
                                                                              caplog):
    client.force_login(people["carol"])
    api = token_for(people["carol"])
    with write_lock_held():
        started = time.monotonic()
        page = client.post("/kbs/", {"name": "Locked KB", "description": ""})
        elapsed = time.monotonic() - started
        assert_storage_fault_logged(caplog, "database is locked")
        response = api.post("/api/v1/kbs", {"name": "Locked KB 2"}, format="json")
    assert page.status_code == 503 and elapsed < 10
    assert "Try again" in page.content.decode() and page["Retry-After"]
    assert response.status_code == 503 and response["Content-Type"].startswith("application/problem+json")
    from search.models import KnowledgeBase

    assert not KnowledgeBase.objects.filter(name__startswith="Locked KB").exists()


def test_login_answers_503_while_the_database_is_held_locked(client, people, caplog):
    with write_lock_held():
        response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 503
    assert PASSWORD not in response.content.decode()
    assert_storage_fault_logged(caplog, "database is locked")


def test_kb_create_page_and_api_answer_503_when_the_disk_is_full(client, tenants, people, token_for, caplog):
    client.force_login(people["carol"])
    api = token_for(people["carol"])
    api.get("/api/v1/kbs")  # the token's last use is recorded before the disk fills
    with database_full():
        page = client.post("/kbs/", {"name": "Full KB", "description": ""})
        assert_storage_fault_logged(caplog, "database or disk is full")
        response = api.post("/api/v1/kbs", {"name": "Full KB 2"}, format="json")
    assert page.status_code == 503 and "Try again" in page.content.decode()
    assert response.status_code == 503 and response["Content-Type"].startswith("application/problem+json")
    from search.models import KnowledgeBase

    assert not KnowledgeBase.objects.filter(name__startswith="Full KB").exists()


def test_login_answers_503_when_the_disk_is_full(client, people, caplog):
    client.post("/accounts/login/", {"username": "alice", "password": "wrong-password-123"})  # one real event
    with database_full():
        response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 503
    assert PASSWORD not in response.content.decode()
    assert_storage_fault_logged(caplog, "database or disk is full")


@pytest.fixture
def staff_client(client, served, tenants, make_user):
    staff = make_user("root", tenants["acme"], "admin")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    return client


def test_readyz_is_not_ready_while_the_audit_store_is_held_locked(staff_client):
    assert staff_client.get("/readyz").status_code == 200
    with write_lock_held():
        started = time.monotonic()
        response = staff_client.get("/readyz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503 and elapsed < 5
    check = response.json()["checks"]["audit_store"]
    assert check["ok"] is False and "locked" in check["detail"]
    assert staff_client.get("/readyz").status_code == 200


def test_readyz_is_not_ready_while_the_audit_store_is_full(staff_client):
    with database_full():
        response = staff_client.get("/readyz")
    assert response.status_code == 503
    check = response.json()["checks"]["audit_store"]
    assert check["ok"] is False and "full" in check["detail"]
    assert staff_client.get("/readyz").status_code == 200


def test_readyz_tells_anonymous_callers_nothing_but_not_ready(client, served):
    with write_lock_held():
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json() == {"status": "not ready"}
