"""The audit chain: every field MAC'd, linked per tenant, append-only at three depths."""
import threading
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction

from audit.ledger.canonical import compute_mac
from audit.ledger.models import GENESIS_HASH, MAC_FIELDS, AuditEvent, AuditEventImmutable
from audit.ledger.services import record_event
from audit.ledger.verify import verify_chain
from tests.audit.conftest import audit_writes_refused
from keystore.keys import get_keyring


@pytest.fixture
def chain_events(tenants, make_user):
    user = make_user("alice", tenants["acme"], "searcher")
    events = [
        record_event(action="search.completed", tenant=tenants["acme"], user=user,
                     query=f"question {i}", kb_id=1, kb_name="FAQ", kb_lines=60, result_count=3,
                     top_score=0.5 + i / 100, latency_ms=3.25, model_id="minilm",
                     context={"client_ip": "10.0.0.1", "user_agent": "pytest", "request_id": f"r{i}"})
        for i in range(5)
    ]
    record_event(action="auth.login", tenant=tenants["globex"])
    return events


def drop_triggers():
    """What an attacker with raw database access would do first."""
    import importlib

    migration = importlib.import_module("audit.migrations.0002_append_only_triggers")
    with connection.cursor() as cursor:
        for statement in migration.STATEMENTS[connection.vendor][1]:
            cursor.execute(statement)


def run_verify(*args):
    """audit_verify's exit status and output."""
    from io import StringIO

    out = StringIO()
    try:
        call_command("audit_verify", *args, stdout=out)
        return 0, out.getvalue()
    except CommandError as exc:
        return exc.returncode, out.getvalue()


def test_events_link_per_tenant_and_verify(chain_events, tenants):
    assert [e.seq for e in chain_events] == [1, 2, 3, 4, 5]
    assert chain_events[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.mac for a, b in zip(chain_events, chain_events[1:]))
    globex = AuditEvent.objects.get(tenant=tenants["globex"])
    assert globex.seq == 1 and globex.prev_hash == GENESIS_HASH
    assert run_verify()[0] == 0


def test_platform_chain_holds_events_without_tenant(db):
    first = record_event(action="model.open")
    second = record_event(action="model.open")
    assert (first.chain, first.seq, second.seq) == (0, 1, 2)
    assert verify_chain(0).ok


def test_mac_covers_every_field(chain_events):
    event = chain_events[0]
    fields = {name: getattr(event, name) for name in MAC_FIELDS}
    key = get_keyring().audit_key
    assert compute_mac(key, fields) == event.mac
    for name in MAC_FIELDS:
        changed = dict(fields)
        changed[name] = "x" if not isinstance(fields[name], str) or fields[name] != "x" else "y"
        assert compute_mac(key, changed) != event.mac, f"{name} is not covered by the MAC"
    assert event.key_id == get_keyring().audit_key_id


@pytest.mark.parametrize("column,value", [
    ("query", "'something else'"), ("username", "'mallory'"), ("top_score", "0.99"),
    ("latency_ms", "1"), ("client_ip", "'10.9.9.9'"), ("occurred_at", "'2020-01-01 00:00:00'"),
    ("outcome", "'failure'"), ("action", "'search.failed'"), ("detail", "'{\"a\": 1}'"),
    ("request_id", "'forged'"), ("kb_lines", "61"), ("tenant_id", "NULL"),
])
def test_verify_detects_a_field_changed_by_raw_sql(chain_events, column, value):
    drop_triggers()
    target = chain_events[2]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE audit_auditevent SET {column} = {value} WHERE id = %s", [target.pk])
    code, out = run_verify()
    assert code == 1
    assert f"seq {target.seq} (event id {target.pk})" in out


def test_verify_detects_a_deleted_event(chain_events):
    drop_triggers()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [chain_events[1].pk])
    code, out = run_verify("--tenant", "acme")
    assert code == 1
    assert "missing (deleted)" in out and "seq 3" in out


def test_verify_detects_a_forged_event_appended(chain_events, tenants):
    last = chain_events[-1]
    forged = {name: getattr(last, name) for name in MAC_FIELDS}
    forged.update(seq=last.seq + 1, prev_hash=last.mac, query="forged")
    AuditEvent.objects.create(**forged, mac=compute_mac(b"\x01" * 32, forged))
    code, out = run_verify()
    assert code == 1 and "MAC does not match" in out and f"seq {last.seq + 1}" in out


def test_verify_detects_a_forged_event_inserted_midway(chain_events):
    drop_triggers()
    with connection.cursor() as cursor:
        # Make room at seq 3 by shifting the tail, then put a forged event there.
        for event in reversed(chain_events[2:]):
            cursor.execute("UPDATE audit_auditevent SET seq = seq + 1 WHERE id = %s", [event.pk])
    forged = {name: getattr(chain_events[1], name) for name in MAC_FIELDS}
    forged.update(seq=3, prev_hash=chain_events[1].mac, query="inserted")
    AuditEvent.objects.create(**forged, mac="0" * 64)
    code, out = run_verify()
    assert code == 1 and "seq 3" in out


def test_verify_detects_two_events_swapped(chain_events):
    drop_triggers()
    a, b = chain_events[1], chain_events[2]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET seq = 999999 WHERE id = %s", [a.pk])
        cursor.execute("UPDATE audit_auditevent SET seq = %s WHERE id = %s", [a.seq, b.pk])
        cursor.execute("UPDATE audit_auditevent SET seq = %s WHERE id = %s", [b.seq, a.pk])
    code, out = run_verify()
    assert code == 1 and f"seq {a.seq}" in out


def test_database_triggers_refuse_update_and_delete(chain_events):
    for statement in ("UPDATE audit_auditevent SET query = 'x' WHERE id = %s",
                      "DELETE FROM audit_auditevent WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement, [chain_events[0].pk])
    assert run_verify()[0] == 0


def test_orm_refuses_update_and_delete(chain_events):
    event = chain_events[0]
    event.query = "changed"
    with pytest.raises(AuditEventImmutable):
        event.save()
    with pytest.raises(AuditEventImmutable):
        event.delete()
    with pytest.raises(AuditEventImmutable):
        AuditEvent.objects.filter(pk=event.pk).update(query="changed")
    with pytest.raises(AuditEventImmutable):
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).query == "question 0"


@pytest.mark.parametrize("mode,expected", [
    ("full", "where is the VPN guide"),
    ("truncate:5", "where…"),
])
def test_query_mode_controls_what_is_stored(db, settings, mode, expected):
    settings.AUDIT_QUERY_MODE = mode
    assert record_event(action="search.submitted", query="where is the VPN guide").query == expected


def test_query_mode_hash_stores_a_keyed_digest(db, settings):
    settings.AUDIT_QUERY_MODE = "hash"
    event = record_event(action="search.submitted", query="where is the VPN guide")
    assert event.query.startswith("hmac-sha256:") and "VPN" not in event.query
    assert record_event(action="search.submitted", query="where is the VPN guide").query == event.query


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_never_share_a_predecessor(tenants):
    errors = []

    def append_many():
        try:
            for _ in range(200):
                record_event(action="search.completed", tenant=tenants["acme"])
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=append_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    seqs = list(AuditEvent.objects.filter(tenant=tenants["acme"]).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 1601))
    report = verify_chain(tenants["acme"].pk)
    assert report.ok and report.events == 1600


def _hold_append_lock(path, held, release):
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.set()
    release.wait(30)
    fcntl.flock(fd, fcntl.LOCK_UN)


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_sqlite_appends_of_all_processes_take_turns_on_one_lock_file(tenants):
    # Processes queue on an flock (woken when it is released), not on SQLite's
    # busy handler, which polls with sleeps of up to 100 ms under load.
    import multiprocessing
    import os
    import stat

    record_event(action="auth.login", tenant=tenants["acme"])
    lock_path = str(connection.settings_dict["NAME"]) + ".append-lock"
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_append_lock, args=(lock_path, held, release))
    holder.start()
    try:
        assert held.wait(30)
        appended = threading.Event()

        def append():
            try:
                record_event(action="auth.login", tenant=tenants["acme"])
                appended.set()
            finally:
                connections.close_all()

        thread = threading.Thread(target=append)
        thread.start()
        assert not appended.wait(0.5)  # another process holds the turn
        release.set()
        thread.join(30)
        assert appended.is_set()
    finally:
        release.set()
        holder.join(30)
    assert verify_chain(tenants["acme"].pk).events == 2


@pytest.mark.sqlite_only
@pytest.mark.django_db
def test_a_process_forked_while_another_thread_appends_can_append():
    # A fork copies the append lock as it is; a copy held by a thread the
    # child does not have would block every append in the child for ever.
    import multiprocessing

    from audit.ledger import services

    context = multiprocessing.get_context("fork")
    took_turn = context.Value("b", 0)
    held, release = threading.Event(), threading.Event()

    def hold():  # another thread, in the middle of an append, with one more waiting
        with services._process_append_lock:
            services._waiting.append(services._Pending({}, b"", True))
            held.set()
            release.wait(30)
            services._waiting.clear()

    def child():  # what an append outside a transaction takes: the process's turn, then the file's
        with services._process_append_lock, services._sqlite_append_lock():
            took_turn.value = 1 if not services._waiting else 2

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        forked = context.Process(target=child)
        forked.start()
        forked.join(10)
        stuck = forked.is_alive()
        if stuck:
            forked.kill()
            forked.join()
    finally:
        release.set()
        holder.join(30)
    assert not stuck and forked.exitcode == 0 and took_turn.value == 1


class GroupSpy:
    """The groups of appends written together (a spy on the real ``_write``)."""

    def __init__(self, monkeypatch):
        from audit.ledger import services

        self.services, self.written = services, []
        real = services._write

        def write(group, durable):
            self.written.append((len(group), durable))
            return real(group, durable)

        monkeypatch.setattr(services, "_write", write)

    def run_while_the_turn_is_held(self, appends):
        """Run each of ``appends`` in its own thread, all waiting for the process's
        turn in the list's order, then give the turn: what each returned or
        raised, in order."""
        outcomes = [None] * len(appends)

        def run(n):
            try:
                outcomes[n] = appends[n]()
            except Exception as exc:  # asserted by the caller
                outcomes[n] = exc
            finally:
                connections.close_all()

        threads = [threading.Thread(target=run, args=(n,)) for n in range(len(appends))]
        with self.services._process_append_lock:
            for n, thread in enumerate(threads, 1):  # one at a time: they wait in this order
                thread.start()
                deadline = time.monotonic() + 30
                while len(self.services._waiting) < n and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert len(self.services._waiting) == n
        for thread in threads:
            thread.join(30)
        return outcomes


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_appends_waiting_together_commit_in_one_transaction(tenants, monkeypatch):
    groups = GroupSpy(monkeypatch)
    outcomes = groups.run_while_the_turn_is_held([
        lambda: record_event(action="search.submitted", tenant=tenants["acme"]),
        lambda: record_event(action="search.completed", tenant=tenants["acme"], durable=False),
        lambda: record_event(action="auth.login", tenant=tenants["globex"], durable=False),
        lambda: record_event(action="search.completed", tenant=tenants["acme"], durable=False),
    ])
    # One group, one commit, durable because one of its records asked.
    assert groups.written == [(4, True)]
    assert all(isinstance(event, AuditEvent) for event in outcomes)
    acme = [event for event in outcomes if event.tenant_id == tenants["acme"].pk]
    assert sorted(event.seq for event in acme) == [1, 2, 3]
    stored = AuditEvent.objects.get(chain=tenants["acme"].pk, seq=acme[0].seq)
    assert (stored.pk, stored.mac, stored.action) == (acme[0].pk, acme[0].mac, acme[0].action)
    assert verify_chain(tenants["acme"].pk).events == 3 and verify_chain(tenants["acme"].pk).ok
    assert verify_chain(tenants["globex"].pk).events == 1 and verify_chain(tenants["globex"].pk).ok


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_record_refused_for_itself_does_not_fail_the_others_in_its_group(tenants, monkeypatch):
    from audit.ledger.services import AuditUnavailable

    groups = GroupSpy(monkeypatch)
    outcomes = groups.run_while_the_turn_is_held([
        lambda: record_event(action="search.submitted", tenant=tenants["acme"]),
        lambda: record_event(action="search.submitted", tenant=tenants["acme"], detail={"at": object()}),
        lambda: record_event(action="search.completed", tenant=tenants["acme"], durable=False),
    ])
    # The group failed on the record with no canonical form; each was then written alone.
    assert groups.written == [(3, True), (1, True), (1, True), (1, False)]
    assert isinstance(outcomes[1], AuditUnavailable)
    assert [outcomes[0].seq, outcomes[2].seq] == [1, 2]
    report = verify_chain(tenants["acme"].pk)
    assert report.ok and report.events == 2


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_group_the_store_refuses_fails_every_record_in_it(tenants, monkeypatch):
    from audit.ledger.services import AuditUnavailable

    groups = GroupSpy(monkeypatch)
    with audit_writes_refused():
        outcomes = groups.run_while_the_turn_is_held([
            lambda: record_event(action="search.submitted", tenant=tenants["acme"]),
            lambda: record_event(action="search.completed", tenant=tenants["acme"], durable=False),
        ])
    # The trigger's refusal is not a storage error to SQLite (an IntegrityError):
    # each record was tried again alone, and each failed.
    assert groups.written == [(2, True), (1, True), (1, False)]
    assert all(isinstance(outcome, AuditUnavailable) for outcome in outcomes)
    assert not AuditEvent.objects.filter(tenant=tenants["acme"]).exists()
    assert record_event(action="auth.login", tenant=tenants["acme"]).seq == 1


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_group_the_database_cannot_write_fails_at_once(tenants, monkeypatch):
    import sqlite3

    from audit.ledger import services
    from audit.ledger.services import AuditUnavailable

    groups = GroupSpy(monkeypatch)

    def disk_error(values, key):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(services, "_append", disk_error)
    outcomes = groups.run_while_the_turn_is_held([
        lambda: record_event(action="search.submitted", tenant=tenants["acme"]),
        lambda: record_event(action="search.completed", tenant=tenants["acme"], durable=False),
    ])
    # One try for the group, not one more a record: the next would fail alike.
    assert groups.written == [(2, True)]
    assert all(isinstance(outcome, AuditUnavailable) for outcome in outcomes)
    assert "OperationalError" in str(outcomes[0])
    assert not AuditEvent.objects.filter(tenant=tenants["acme"]).exists()


@pytest.mark.postgresql_only
@pytest.mark.django_db(transaction=True)
def test_postgresql_appends_are_not_grouped(tenants, monkeypatch):
    # Each waits only on its own chain's advisory lock, not on a process turn.
    from audit.ledger import services

    groups = GroupSpy(monkeypatch)
    events = []

    def append():
        try:
            events.append(record_event(action="search.submitted", tenant=tenants["acme"]))
            events.append(record_event(action="search.completed", tenant=tenants["globex"], durable=False))
        finally:
            connections.close_all()

    with services._process_append_lock:  # a group's turn, held: PostgreSQL appends do not take it
        thread = threading.Thread(target=append)
        thread.start()
        thread.join(10)
        waited = thread.is_alive()
    thread.join(30)
    assert not waited
    assert groups.written == [(1, True), (1, False)]
    assert [event.seq for event in events] == [1, 1] and not services._waiting


@pytest.mark.django_db(transaction=True)
def test_a_refused_append_outside_any_transaction_leaves_nothing_open(tenants):
    # Outside an atomic block (a request, a command) SQLite appends run their
    # own BEGIN IMMEDIATE … COMMIT; a refused insert must roll that back.
    from audit.ledger.services import AuditUnavailable

    first = record_event(action="auth.login", tenant=tenants["acme"])
    assert not connection.in_atomic_block
    with audit_writes_refused():
        with pytest.raises(AuditUnavailable):
            record_event(action="auth.login", tenant=tenants["acme"])
        assert connection.get_autocommit() and not connection.in_atomic_block
        if connection.vendor == "sqlite":
            assert not connection.connection.in_transaction
    second = record_event(action="auth.login", tenant=tenants["acme"])
    assert second.seq == first.seq + 1 and verify_chain(tenants["acme"].pk).ok


class CommitTrace:
    """The statements SQLite runs on the connection, in order (its trace callback)."""

    def __init__(self):
        self.statements = []

    def __enter__(self):
        connection.ensure_connection()
        connection.connection.set_trace_callback(self.statements.append)
        return self

    def __exit__(self, *exc):
        connection.connection.set_trace_callback(None)

    def commits(self):
        """For each COMMIT, the synchronous setting it ran under ("FULL" unless set otherwise before it)."""
        mode, seen = "FULL", []
        for statement in self.statements:
            if statement.startswith("PRAGMA synchronous="):
                mode = statement.split("=", 1)[1]
            elif statement == "COMMIT":
                seen.append(mode)
        return seen


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_record_that_is_not_durable_commits_without_waiting_for_the_disk(tenants):
    with CommitTrace() as trace:
        first = record_event(action="search.submitted", tenant=tenants["acme"])
        second = record_event(action="search.completed", tenant=tenants["acme"], durable=False)
        third = record_event(action="search.submitted", tenant=tenants["acme"])
    assert trace.commits() == ["FULL", "NORMAL", "FULL"]
    # The connection is left as the settings open it, and the chain is whole.
    assert connection.connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert [first.seq, second.seq, third.seq] == [1, 2, 3] and verify_chain(tenants["acme"].pk).ok


@pytest.mark.postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_record_that_is_not_durable_turns_synchronous_commit_off(tenants):
    seen = []

    def spy(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        record_event(action="search.submitted", tenant=tenants["acme"])
        record_event(action="search.completed", tenant=tenants["acme"], durable=False)
    assert [s for s in seen if "synchronous_commit" in s] == ["SET LOCAL synchronous_commit TO OFF"]
    with connection.cursor() as cursor:  # SET LOCAL ended with its transaction
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    assert verify_chain(tenants["acme"].pk).ok


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_refused_append_that_is_not_durable_leaves_the_connection_durable(tenants):
    from audit.ledger.services import AuditUnavailable

    with audit_writes_refused():
        with pytest.raises(AuditUnavailable):
            record_event(action="search.completed", tenant=tenants["acme"], durable=False)
    assert connection.connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert not connection.connection.in_transaction
