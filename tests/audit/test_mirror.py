"""The SIEM mirror: one JSON line per committed event, 0600, fsync'd; a failure
is logged and shown to staff on /readyz while the database keeps the event.

Tests run inside a transaction, so `committed` runs the on-commit hooks the
way a real commit does."""
import json
import logging
import os
import stat

import pytest
from django.db import transaction

from audit.ledger import mirror
from audit.ledger.models import AuditEvent
from audit.ledger.services import record_event


@pytest.fixture(autouse=True)
def fresh_status(monkeypatch):
    monkeypatch.setattr(mirror, "status", mirror.MirrorStatus())


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    return lambda: django_capture_on_commit_callbacks(execute=True)


def test_each_event_is_appended_with_its_mac(tenants, settings, tmp_path, committed):
    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    with committed():
        events = [record_event(action="search.completed", tenant=tenants["acme"], query=f"q{i}") for i in range(3)]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["mac"] for line in lines] == [e.mac for e in events]
    assert lines[0]["query"] == "q0" and lines[0]["tenant_id"] == tenants["acme"].pk
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_mirror_lines_match_the_export_form(tenants, settings, tmp_path, committed):
    from audit.ledger.export import event_line
    from audit.ledger.models import MAC_FIELDS

    settings.AUDIT_JSONL_PATH = str(tmp_path / "audit.jsonl")
    with committed():
        record_event(action="search.completed", tenant=tenants["acme"], query="same bytes", top_score=0.5)
    row = AuditEvent.objects.values("mac", *MAC_FIELDS).get()
    assert (tmp_path / "audit.jsonl").read_bytes() == event_line(row)


def test_a_rolled_back_event_is_not_mirrored(tenants, settings, tmp_path, committed):
    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    with committed(), pytest.raises(RuntimeError):
        with transaction.atomic():
            record_event(action="token.create", tenant=tenants["acme"])
            raise RuntimeError("the action failed after its event")
    assert not path.exists() or path.read_text() == ""


def test_a_mirror_failure_is_logged_and_the_event_kept(tenants, settings, tmp_path, caplog, committed):
    settings.AUDIT_JSONL_PATH = str(tmp_path / "missing-dir" / "audit.jsonl")
    with caplog.at_level(logging.ERROR, logger="audit.mirror"), committed():
        event = record_event(action="search.completed", tenant=tenants["acme"])
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert "could not append chain" in caplog.text and "FileNotFoundError" in caplog.text
    ok, detail = mirror.mirror_check()
    assert ok and detail.startswith("DEGRADED") and f"seq {event.seq}" in detail


def test_readyz_shows_the_mirror_failure_to_staff_only(tenants, settings, tmp_path, client, make_user, committed):
    settings.AUDIT_JSONL_PATH = str(tmp_path / "missing-dir" / "audit.jsonl")
    with committed():
        record_event(action="search.completed", tenant=tenants["acme"])
    anonymous = client.get("/readyz").json()
    assert "checks" not in anonymous
    staff = make_user("ops", tenants["acme"], "admin")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    checks = client.get("/readyz").json()["checks"]
    assert checks["audit_mirror"]["detail"].startswith("DEGRADED")


# --- a full disk: nothing lost, no partial line, caught up from the database ---

class FullDisk:
    """Stands in for os.write at the mirror's one write seam: while full,
    writes what still fits (``room`` bytes) and then fails with ENOSPC."""

    def __init__(self, monkeypatch, room):
        import errno

        self.real, self.room, self.errno = mirror._write, room, errno.ENOSPC
        monkeypatch.setattr(mirror, "_write", self)

    def __call__(self, fd, data):
        if self.room is None:
            return self.real(fd, data)
        if self.room <= 0:
            raise OSError(self.errno, os.strerror(self.errno))
        written = self.real(fd, bytes(data[:self.room]))
        self.room -= written
        return written

    def space_returns(self):
        self.room = None


def assert_mirror_holds_every_event_once(path, chain):
    from audit.ledger.export import event_line
    from audit.ledger.models import MAC_FIELDS

    data = path.read_bytes()
    assert data.endswith(b"\n"), "the file ends in a partial line"
    lines = [json.loads(line) for line in data.splitlines()]  # valid JSONL: every line parses
    seqs = [line["seq"] for line in lines if line["chain"] == chain]
    rows = list(AuditEvent.objects.filter(chain=chain).order_by("seq").values("mac", *MAC_FIELDS))
    assert seqs == [row["seq"] for row in rows], "every event exactly once, in seq order"
    mine = [line for line in data.splitlines(keepends=True) if json.loads(line)["chain"] == chain]
    assert mine == [event_line(row) for row in rows], "the lines are the events' export form"
    return seqs


def test_a_full_disk_loses_no_event_and_leaves_no_partial_line(tenants, settings, tmp_path, committed,
                                                                monkeypatch, caplog):
    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    acme = tenants["acme"]
    with committed():
        for i in range(3):
            record_event(action="search.completed", tenant=acme, query=f"before {i}")
    assert len(path.read_bytes().splitlines()) == 3
    disk = FullDisk(monkeypatch, room=100)  # less than one line still fits
    with caplog.at_level(logging.ERROR, logger="audit.mirror"):
        for i in range(60):
            with committed():
                record_event(action="search.completed", tenant=acme, query=f"while full {i}")
    assert AuditEvent.objects.filter(chain=acme.pk).count() == 63, "the appends themselves never failed"
    assert "ENOSPC" in caplog.text or "No space left" in caplog.text
    assert disk.room == 0, "the first failed write did write part of its line"
    data = path.read_bytes()
    assert data.endswith(b"\n") and len(data.splitlines()) == 3, "the partial line was cut back"
    assert mirror.mirror_check()[1].startswith("DEGRADED")

    disk.space_returns()
    with committed():
        record_event(action="auth.login", tenant=acme)
    assert assert_mirror_holds_every_event_once(path, acme.pk) == list(range(1, 65))
    ok, detail = mirror.mirror_check()
    assert ok and "recovered" in detail and "60 missed event(s) caught up" in detail, detail


def test_a_new_worker_catches_up_what_an_earlier_one_missed(tenants, settings, tmp_path, committed, monkeypatch):
    """The worker that failed is gone (restart): the state beside the file and
    the file's own tail tell the next one where each chain stopped."""
    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    acme, globex = tenants["acme"], tenants["globex"]
    with committed():
        record_event(action="auth.login", tenant=acme)
        record_event(action="auth.login", tenant=globex)
    disk = FullDisk(monkeypatch, room=0)
    for tenant in (acme, globex, acme, globex, acme):
        with committed():
            record_event(action="search.completed", tenant=tenant)
    disk.space_returns()
    monkeypatch.setattr(mirror, "_memory", {})  # a fresh worker process
    with committed():
        record_event(action="auth.logout", tenant=globex)
    assert assert_mirror_holds_every_event_once(path, globex.pk) == [1, 2, 3, 4]
    with committed():
        record_event(action="auth.logout", tenant=acme)
    assert assert_mirror_holds_every_event_once(path, acme.pk) == [1, 2, 3, 4, 5]


def test_a_partial_line_left_by_a_killed_worker_is_cut_off_and_rewritten(tenants, settings, tmp_path, committed):
    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    acme = tenants["acme"]
    with committed():
        record_event(action="auth.login", tenant=acme)
    # A worker killed mid-write of seq 2: half its line reached the file, the state never heard of it.
    second = record_event(action="search.completed", tenant=acme, query="half written")
    from audit.ledger.export import event_line
    from audit.ledger.models import MAC_FIELDS

    line = event_line(AuditEvent.objects.values("mac", *MAC_FIELDS).get(pk=second.pk))
    with open(path, "ab") as handle:
        handle.write(line[:len(line) // 2])
    with committed():
        record_event(action="auth.logout", tenant=acme)
    assert assert_mirror_holds_every_event_once(path, acme.pk) == [1, 2, 3]


def test_the_mirror_catches_up_on_a_real_full_file_system(tenants, settings, tmp_path, committed):
    """The same on a real 64 KiB tmpfs (needs root; skipped where mounting is refused)."""
    import shutil
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:100]}")
    try:
        path = mount / "audit.jsonl"
        settings.AUDIT_JSONL_PATH = str(path)
        acme = tenants["acme"]
        with committed():
            record_event(action="auth.login", tenant=acme)
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the file system to the last byte
            for size in (4096, 512, 1):
                try:
                    while os.write(fd, b"\0" * size):
                        pass
                except OSError:
                    pass
        finally:
            os.close(fd)
        for i in range(20):  # the first may still fit in the mirror file's last page
            with committed():
                record_event(action="search.completed", tenant=acme, query=f"disk full {i}" * 20)
        data = path.read_bytes()
        assert data.endswith(b"\n"), "a partial line was left behind"
        assert len(data.splitlines()) < 21, "the disk never filled up"
        assert mirror.mirror_check()[1].startswith("DEGRADED")
        filler.unlink()  # space returns
        with committed():
            record_event(action="auth.logout", tenant=acme)
        assert assert_mirror_holds_every_event_once(path, acme.pk) == list(range(1, 23))
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def test_a_worker_stuck_holding_the_lock_delays_nothing_for_long(tenants, settings, tmp_path, committed,
                                                                  monkeypatch):
    import fcntl

    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    monkeypatch.setattr(mirror, "LOCK_WAIT_SECONDS", 0.2)
    with committed():
        record_event(action="auth.login", tenant=tenants["acme"])
    stuck = os.open(f"{path}.state", os.O_RDWR)  # another open file: flock excludes it like another process
    fcntl.flock(stuck, fcntl.LOCK_EX)
    try:
        with committed():
            record_event(action="search.completed", tenant=tenants["acme"])
        assert "TimeoutError" in mirror.mirror_check()[1]
    finally:
        os.close(stuck)
    with committed():
        record_event(action="auth.logout", tenant=tenants["acme"])
    assert assert_mirror_holds_every_event_once(path, tenants["acme"].pk) == [1, 2, 3]


@pytest.mark.django_db(transaction=True)
def test_workers_in_separate_processes_mirror_every_event_once_in_order(tenants, settings, tmp_path, monkeypatch):
    """Four forked workers append to two chains at once, the disk failing for
    a while in between: the file ends with every event once, in seq order per chain."""
    import multiprocessing

    from django.db import connections

    path = tmp_path / "audit.jsonl"
    settings.AUDIT_JSONL_PATH = str(path)
    acme, globex = tenants["acme"], tenants["globex"]

    def worker(number):
        connections.close_all()
        if number == 0:
            FullDisk(monkeypatch, room=0)  # this worker's disk is "full" for its first appends
        for i in range(25):
            if number == 0 and i == 10:
                mirror._write = os.write
            record_event(action="search.completed", tenant=acme if (number + i) % 2 else globex, query=f"{number}/{i}")
        connections.close_all()

    connections.close_all()
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=worker, args=(n,)) for n in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    record_event(action="auth.login", tenant=acme)
    record_event(action="auth.login", tenant=globex)
    assert AuditEvent.objects.count() == 102
    acme_seqs = assert_mirror_holds_every_event_once(path, acme.pk)
    globex_seqs = assert_mirror_holds_every_event_once(path, globex.pk)
    assert len(acme_seqs) + len(globex_seqs) == 102
