"""The SIEM mirror: with AUDIT_JSONL_PATH set, every committed event is also
appended to that file as one JSON line (the events.jsonl form of an export,
MAC included), opened O_APPEND, fsync'd, mode 0600.

The database stays the source of truth: a mirror write that fails is logged
and remembered for /readyz (staff see the details), and never fails the
event. Lines are written after the transaction commits, so a rolled-back
event never reaches the SIEM.

Nothing is lost when a write fails (a full disk, a missing folder):

- The mirror remembers, per chain, the last seq it wrote: in
  ``AUDIT_JSONL_PATH.state`` beside the file (JSON, rewritten in place after
  every append), checked against the file itself: lines the state does not
  yet account for (its own write failed, or a worker died) are read back
  from the file's tail. Workers take turns through ``flock`` on that state
  file.
- Each append writes, in seq order, every event of the chain after that
  last seq, read back from the database, then the new one: the first append
  after a failure catches up (at most ``CATCH_UP_BATCH`` events at a time;
  the next appends continue).
- A write that fails part-way is cut back (``ftruncate``) to the size the
  file had before it, so the file never ends in a partial line; a partial
  line left by a worker killed mid-write is cut off by the next append.

A chain the mirror has no record of (no state, and not in the file's last
``TAIL_SCAN_BYTES``) is mirrored from its first event: switching the mirror
on for a portal with history replays that history, ``CATCH_UP_BATCH`` events
per append, before the new events.
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings

from audit.ledger.canonical import canonical_bytes, format_time

# The name it had before audit/ledger/: log filters and alerts know it.
logger = logging.getLogger("audit.mirror")

CATCH_UP_BATCH = 5000
TAIL_SCAN_BYTES = 64 << 20
LOCK_WAIT_SECONDS = 5.0


@dataclass
class MirrorStatus:
    lines_written: int = 0
    failures: int = 0
    last_error: str = ""
    last_error_at: str = ""
    last_failed_event: str = ""
    behind: set = field(default_factory=set)  # chains with events not yet mirrored
    caught_up: int = 0  # missed events written later, from the database
    last_caught_up_at: str = ""


status = MirrorStatus()
_lock = threading.Lock()
# Per mirror path, what this worker knows: {"chains": {chain: last seq written},
# "ino": …, "size": …} (the file's inode and size that knowledge covers).
_memory: dict[str, dict] = {}


def mirror_line(values: dict) -> bytes:
    return canonical_bytes(values) + b"\n"


def _write(fd: int, data) -> int:
    """The one seam through which every byte of the mirror (lines and state) is
    written: os.write, which may write less than asked (a disk filling up)."""
    return os.write(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = _write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the mirror write made no progress")
        view = view[written:]


def append_lines(path: str, data: bytes) -> tuple[int, int]:
    """Append whole lines, fsync'd; (inode, size after). A failed write is cut
    back to the size before it: no partial line stays behind."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        before = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, before)
                os.fsync(fd)
            except OSError as exc:  # the next append cuts the partial line off
                logger.error("audit SIEM mirror: could not cut a failed write back: %s", exc.__class__.__name__)
            raise
        stat = os.fstat(fd)
        return stat.st_ino, stat.st_size
    finally:
        os.close(fd)


def append_line(path: str, line: bytes) -> None:
    append_lines(path, line)


# --- what has been written: the state file, checked against the file ---------

def _read_state(fd: int, path: str) -> dict | None:
    try:
        size = os.fstat(fd).st_size
        if not size:
            return None
        raw = json.loads(os.pread(fd, size, 0))
        return {"chains": {int(k): int(v) for k, v in raw["chains"].items()},
                "ino": raw.get("ino"), "size": int(raw.get("size") or 0)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        logger.warning("audit SIEM mirror: %s.state is unreadable; rebuilding it from the mirror file", path)
        return None


def _save_state(fd: int, path: str, state: dict) -> None:
    """Rewrite the state in place (a rename would cost a flush on ext4, as much
    as the append's own fsync). Torn or failed, it reads as unreadable and is
    rebuilt from this worker's memory and the file's tail."""
    data = json.dumps({"chains": {str(k): v for k, v in sorted(state["chains"].items())},
                       "ino": state["ino"], "size": state["size"]}, sort_keys=True).encode() + b"\n"
    try:
        old_size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, data)
        if old_size > len(data):
            os.ftruncate(fd, len(data))
    except OSError as exc:  # the file itself is the record: the next append reads its tail back
        logger.warning("audit SIEM mirror: could not save %s.state (%s); it is rebuilt from the mirror file",
                       path, exc.__class__.__name__)


def _scan(path: str, start: int, state: dict) -> int:
    """Read the lines from byte ``start`` on into ``state``; cut off a partial
    last line. Returns the file's size afterwards."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if start < size - TAIL_SCAN_BYTES:
            start = size - TAIL_SCAN_BYTES
        data = os.pread(fd, size - start, start) if size > start else b""
        if start > 0 and data:
            if os.pread(fd, 1, start - 1) != b"\n":  # began mid-line: skip to the next one
                cut = data.find(b"\n")
                data = data[cut + 1:] if cut >= 0 else b""
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            os.ftruncate(fd, size - (len(data) - complete))
            os.fsync(fd)
            logger.warning("audit SIEM mirror: cut off a partial last line (%d bytes) of %s",
                           len(data) - complete, path)
            size -= len(data) - complete
        for line in data[:complete].splitlines():
            try:
                event = json.loads(line)
                chain, seq = int(event["chain"]), int(event["seq"])
            except (ValueError, KeyError, TypeError):
                continue
            if seq > state["chains"].get(chain, 0):
                state["chains"][chain] = seq
        return size
    finally:
        os.close(fd)


def _load_state(fd: int, path: str) -> dict:
    """What has been written to ``path``, per chain: this worker's memory and
    the state file, whichever knows more, plus any lines written after what
    they account for."""
    memory = _memory.setdefault(path, {"chains": {}, "ino": None, "size": 0})
    disk = _read_state(fd, path)
    state = {"chains": dict(memory["chains"]), "ino": None, "size": 0}
    for chain, seq in (disk["chains"] if disk is not None else {}).items():
        if seq > state["chains"].get(chain, -1):
            state["chains"][chain] = seq
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return state
    # How far into this very file (same inode) the memory or the state file reaches.
    known = [m["size"] for m in (memory, disk) if m is not None and m["ino"] == stat.st_ino]
    if not known:  # a new file (rotated), or no record of this one yet
        state["size"] = _scan(path, 0, state)
    elif stat.st_size > max(known):  # lines written after what they account for
        state["size"] = _scan(path, max(known), state)
    else:
        state["size"] = stat.st_size
    state["ino"] = stat.st_ino
    return state


def _missed(chain: int, after: int, before: int) -> list[tuple[int, bytes]]:
    """The chain's events with after < seq < before, from the database, in order."""
    from audit.ledger.export import event_line
    from audit.ledger.models import MAC_FIELDS, AuditEvent

    rows = (AuditEvent.objects.filter(chain=chain, seq__gt=after, seq__lt=before).order_by("seq")
            .values("mac", *MAC_FIELDS)[:CATCH_UP_BATCH])
    return [(row["seq"], event_line(row)) for row in rows]


def _take_turn(fd: int) -> None:
    """flock, but never wait on a stuck worker for long: the request that
    recorded the event is waiting. Timed out, the append counts as failed and
    the chain's next append catches up."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError("another worker has held the mirror's lock for "
                                   f"{LOCK_WAIT_SECONDS:g} s") from None
            time.sleep(0.002)


def _mirror(path: str, values: dict) -> tuple[int, int, bool]:
    """Under the file lock: write what the chain misses, then ``values``.
    Returns (lines written, of which caught up, whether the chain is now current)."""
    chain, seq = values["chain"], values["seq"]
    lock = os.open(path + ".state", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _take_turn(lock)
        state = _load_state(lock, path)
        memory = _memory[path]
        # A chain the mirror has no record of is mirrored from its start: only
        # that is the same in every worker, whatever failed before (a first
        # append that failed in one worker must not be skipped by the next).
        last = state["chains"].get(chain, 0)
        if seq <= last:  # another append already caught up past it
            memory.update(state)
            return 0, 0, True
        lines = _missed(chain, last, seq) if seq > last + 1 else []
        caught_up = len(lines)
        if caught_up < CATCH_UP_BATCH:
            lines.append((seq, mirror_line(values)))
        ino, size = append_lines(path, b"".join(line for _, line in lines))
        state["chains"][chain] = lines[-1][0]
        state["ino"], state["size"] = ino, size
        memory.update({"chains": dict(state["chains"]), "ino": ino, "size": size})
        _save_state(lock, path, state)
        return len(lines), caught_up, lines[-1][0] == seq
    finally:
        os.close(lock)  # releases the flock


def mirror_event(values: dict) -> None:
    """Append one event (its MAC'd fields and MAC) to the mirror, after any of
    its chain's events that an earlier failure left out; log any failure."""
    path = settings.AUDIT_JSONL_PATH
    if not path:
        return
    chain = values.get("chain")
    try:
        with _lock:
            written, caught_up, current = _mirror(path, values)
            status.lines_written += written
            if caught_up:
                status.caught_up += caught_up
                status.last_caught_up_at = format_time(dt.datetime.now(dt.timezone.utc))
                logger.warning("audit SIEM mirror: caught up chain %s: wrote %d missed event(s) from the database",
                               chain, caught_up)
            if current:
                status.behind.discard(chain)
            else:
                status.behind.add(chain)
    except Exception as exc:  # the database holds the event; the mirror only lags
        with _lock:
            status.failures += 1
            status.behind.add(chain)
            status.last_error = f"{exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc}"
            status.last_error_at = format_time(dt.datetime.now(dt.timezone.utc))
            status.last_failed_event = f"chain {chain} seq {values.get('seq')}"
        logger.error("audit SIEM mirror: could not append chain %s seq %s to AUDIT_JSONL_PATH: %s "
                     "(the next append of the chain catches up from the database)",
                     chain, values.get("seq"), status.last_error)


def mirror_check() -> tuple[bool, str]:
    """Readiness detail. The mirror never makes the portal unready (the
    database is the record); a failure shows as DEGRADED in the detail until
    the chains it left behind have caught up."""
    if not settings.AUDIT_JSONL_PATH:
        return True, "off (AUDIT_JSONL_PATH not set)"
    if status.behind:
        return True, (f"DEGRADED: {status.failures} failed append(s) in this worker, last "
                      f"{status.last_failed_event} at {status.last_error_at} ({status.last_error}); "
                      f"chain(s) {', '.join(map(str, sorted(status.behind)))} not yet caught up; "
                      "the database still holds their events")
    if status.failures:
        return True, (f"ok: {status.lines_written} line(s) appended by this worker; recovered from "
                      f"{status.failures} failed append(s) (last {status.last_failed_event} at "
                      f"{status.last_error_at}), {status.caught_up} missed event(s) caught up at "
                      f"{status.last_caught_up_at}")
    return True, f"ok: {status.lines_written} line(s) appended by this worker"
