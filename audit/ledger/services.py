"""Recording audit events: the one function every caller uses."""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import ipaddress
import fcntl
import logging
import os
import threading
import time

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction

from audit.ledger.canonical import compute_mac
from audit.ledger.checkpoints import checkpoint_after_append, checkpoint_due
from audit.ledger.metrics import AUDIT_APPEND_FAILURES, AUDIT_APPEND_SECONDS
from audit.ledger.mirror import mirror_event
from audit.ledger.models import GENESIS_HASH, MAC_FIELDS, PLATFORM_CHAIN, AuditEvent, Outcome
from keystore.keys import derive_subkey, get_keyring, key_id

# The name it had before audit/ledger/: log filters and alerts know it.
logger = logging.getLogger("audit.services")


class AuditUnavailable(Exception):
    """The audit log could not be written; the action it records must not happen."""


def chain_of(tenant) -> int:
    return tenant.pk if tenant is not None else PLATFORM_CHAIN


@functools.lru_cache(maxsize=4)
def _mac_key(audit_key: bytes) -> tuple[bytes, str]:
    return audit_key, key_id(audit_key)


@functools.lru_cache(maxsize=4)
def _query_digest_key(audit_key: bytes) -> bytes:
    return derive_subkey(audit_key, "query-digest")


def stored_query(query: str) -> str:
    """The query as AUDIT_QUERY_MODE says to keep it: full, truncate:N or hash."""
    mode = settings.AUDIT_QUERY_MODE
    if not query or mode == "full":
        return query
    if mode == "hash":
        digest = hmac.new(_query_digest_key(get_keyring().audit_key), query.encode(), hashlib.sha256)
        return "hmac-sha256:" + digest.hexdigest()
    limit = int(mode.split(":", 1)[1])
    return query if len(query) <= limit else query[:limit] + "…"


@functools.lru_cache(maxsize=1024)
def _normalise_ip(value):
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


# The hot path is plain SQL on the database driver's own cursor: the ORM's
# query building, and even Django's cursor wrapper, cost more than the HMAC,
# the fsync and the insert together (bench/audit_append.py).
_TABLE = AuditEvent._meta.db_table
_INSERT_FIELDS = [f for f in AuditEvent._meta.concrete_fields if f.attname != "id"]
_INSERT_NAMES = [f.attname for f in _INSERT_FIELDS]
_EVENT_NAMES = [f.attname for f in AuditEvent._meta.concrete_fields]
_OCCURRED_AT, _DETAIL, _CLIENT_IP = (_INSERT_NAMES.index(name) for name in ("occurred_at", "detail", "client_ip"))
_TEXT_FIELDS = ("username", "auth_method", "user_agent", "session_digest", "request_id",
                "resource_type", "resource_id", "kb_name", "model_id")
_BLANK_EVENT = {**{name: None for name in MAC_FIELDS}, **{name: "" for name in _TEXT_FIELDS}}
_LAST_SQL = f"SELECT seq, mac FROM {_TABLE} WHERE chain = %s ORDER BY seq DESC LIMIT 1"


def _lock_chain(chain: int) -> None:
    """Serialise appends per chain. SQLite runs IMMEDIATE transactions (one
    writer at a time); PostgreSQL takes a transaction-scoped advisory lock."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [0x61756474, chain])


@functools.lru_cache(maxsize=4)
def _statements(vendor: str) -> tuple[str, str]:
    """(last-row query, insert) in the driver's placeholder style."""
    mark = "?" if vendor == "sqlite" else "%s"
    last = _LAST_SQL.replace("%s", mark)
    insert = "INSERT INTO {} ({}) VALUES ({}) RETURNING id".format(
        _TABLE, ", ".join(f.column for f in _INSERT_FIELDS), ", ".join([mark] * len(_INSERT_FIELDS)))
    return last, insert


def _append(values: dict, key: bytes) -> None:
    """Link ``values`` to its chain's head, MAC it and insert it, inside the
    current transaction, under the chain lock (``_lock_chain``)."""
    last_sql, insert_sql = _statements(connection.vendor)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(last_sql, (values["chain"],))
        last = cursor.fetchone()
        now = dt.datetime.now(dt.timezone.utc)
        values["occurred_at"] = now.replace(microsecond=now.microsecond // 1000 * 1000)
        values["seq"] = last[0] + 1 if last else 1
        values["prev_hash"] = last[1] if last else GENESIS_HASH
        values.pop("id", None)  # from a group that was rolled back: the MAC covers the MAC fields only
        values.pop("mac", None)
        values["mac"] = compute_mac(key, values)
        row = [values[name] for name in _INSERT_NAMES]
        # Only these columns need the backend's adaptation; every other value
        # is a plain str, int, float or None.
        ops = connection.ops
        row[_OCCURRED_AT] = ops.adapt_datetimefield_value(values["occurred_at"])
        row[_DETAIL] = ops.adapt_json_value(values["detail"], None)
        row[_CLIENT_IP] = ops.adapt_ipaddressfield_value(values["client_ip"])
        cursor.execute(insert_sql, row)
        values["id"] = cursor.fetchone()[0]
    finally:
        cursor.close()


_process_append_lock = threading.Lock()  # this process's turn to append to SQLite, outside a caller's transaction
_append_lock_files: dict[str, int] = {}  # database: this process's descriptor of its lock file
_waiting: collections.deque[_Pending] = collections.deque()  # appends of this process waiting for their turn
# The most appends one group commits together: a bound on the group's own time.
MAX_GROUP = 32


class _Pending:
    """One append waiting for its process's turn."""

    __slots__ = ("values", "key", "durable", "done", "error")

    def __init__(self, values: dict, key: bytes, durable: bool):
        self.values, self.key, self.durable = values, key, durable
        self.done = False
        self.error: Exception | None = None


def _reset_append_lock_after_fork() -> None:
    # A fork taken while another thread held the lock would leave the child's
    # copy locked for ever (the child has only the forking thread). The
    # inherited descriptors share the parent's flock: the child opens its own.
    # Closing a copy does not release the parent's lock. Appends waiting in
    # the parent's threads are not the child's.
    global _process_append_lock
    _process_append_lock = threading.Lock()
    for fd in _append_lock_files.values():
        os.close(fd)
    _append_lock_files.clear()
    _waiting.clear()


os.register_at_fork(after_in_child=_reset_append_lock_after_fork)


def _append_lock_file(name: str) -> int:
    fd = _append_lock_files.get(name)
    if fd is None:
        fd = _append_lock_files[name] = os.open(name + ".append-lock", os.O_RDWR | os.O_CREAT, 0o600)
    return fd


@contextlib.contextmanager
def _sqlite_append_lock():
    """The processes appending to one SQLite file take turns in arrival order,
    on an flock of ``<database>.append-lock``: it wakes the next writer the
    moment it is released, where SQLite's own busy handler polls with sleeps
    of 1 to 100 ms. The caller holds its process's turn
    (``_process_append_lock``). An in-memory database has one process."""
    name = str(connection.settings_dict["NAME"])
    if name.startswith(":memory:") or "mode=memory" in name:
        yield
        return
    fd = _append_lock_file(name)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _append_in_turn(values: dict, key: bytes, durable: bool) -> None:
    """Append on SQLite outside any transaction of the caller's (group commit).

    The append waits with this process's others for the process's turn.
    Whichever thread gets the turn writes every append waiting then (at most
    MAX_GROUP) in one transaction: one commit, one wait for the disk, the
    index pages written once, for the whole group. Each caller returns only
    once its own record is committed, as durably as it asked (the group's
    commit is durable if any of its records asked)."""
    item = _Pending(values, key, durable)
    _waiting.append(item)
    while not item.done:
        with _process_append_lock:
            if not item.done:  # else written by the thread that had the turn before
                _write_waiting()
    if item.error is not None:
        raise item.error


def _write_waiting() -> None:
    """Write the appends waiting, oldest first, at most MAX_GROUP, and give
    each its outcome. A database that cannot be written fails the whole
    group at once. A group that failed on a record of its own (a value the
    database refuses, a detail with no canonical form) is written again
    record by record, so that only that record fails."""
    group: list[_Pending] = []
    try:
        while _waiting and len(group) < MAX_GROUP:
            group.append(_waiting.popleft())
        _write(group, durable=any(item.durable for item in group))
    except (DatabaseError, TypeError, ValueError) as exc:
        if len(group) == 1 or isinstance(exc, OperationalError):
            _settle(group, exc)
        else:
            _write_one_by_one(group, exc)
    except Exception as exc:
        _settle(group, exc)
    except BaseException:
        _settle(group, AuditUnavailable("the append was interrupted"))
        raise
    else:
        _settle(group, None)


def _write_one_by_one(group: list[_Pending], group_error: Exception) -> None:
    try:
        for item in group:
            try:
                _write([item], durable=item.durable)
            except Exception as exc:
                item.error = exc
            item.done = True
    finally:
        _settle(group, group_error)  # any not reached


def _settle(group: list[_Pending], error: Exception | None) -> None:
    for item in group:
        if not item.done:
            item.error, item.done = error, True


def _write(group: list[_Pending], durable: bool) -> None:
    """Append ``group`` in one transaction of this thread's connection."""
    # The driver's errors as Django's (the inserts run on the driver's cursor).
    with connection.wrap_database_errors, _append_transaction(durable):
        for chain in sorted({item.values["chain"] for item in group}):
            _lock_chain(chain)
        for item in group:
            _append(item.values, item.key)


@contextlib.contextmanager
def _append_transaction(durable: bool):
    """The transaction appends run in, outside any transaction of the
    caller's (on SQLite the caller holds its process's turn). On SQLite, a bare
    BEGIN IMMEDIATE … COMMIT on the driver's connection: the same write lock
    and the same durability as atomic(), without its bookkeeping, which cost
    as much as the insert itself (bench/audit_append.py). Not ``durable``:
    the commit does not wait for the disk (see record_event)."""
    connection.ensure_connection()
    if connection.vendor != "sqlite":
        with transaction.atomic():
            if not durable:
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
            yield
        return
    with _sqlite_append_lock():
        yield from _sqlite_transaction(durable)


def _sqlite_transaction(durable: bool):
    db = connection.connection
    if not durable:
        # WAL mode: the commit is appended to the WAL without an fsync; the
        # next FULL commit (every submitted record) syncs it with its own.
        db.execute("PRAGMA synchronous=NORMAL")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        if not durable:
            db.execute(f"PRAGMA synchronous={settings.SQLITE_SYNCHRONOUS}")


def record_event(*, action: str, outcome: str = Outcome.SUCCESS, tenant=None, user=None,
                 context: dict | None = None, query: str = "", detail: dict | None = None,
                 durable: bool = True, **fields) -> AuditEvent:
    """Append one event to its tenant's chain (or the platform chain).

    ``context`` carries the request facts (see ``audit.ledger.context``); ``fields``
    are any other event columns (resource_type, kb_id, top_score, …).
    Raises AuditUnavailable if the event could not be stored.

    ``durable=False`` commits without waiting for the disk (SQLite
    ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``), for a record
    whose action an earlier durable record already proves: a power cut may
    lose it, never a crash of the process, and never the chain's integrity
    (the next durable commit flushes it). Inside a caller's transaction the
    caller's commit decides.
    """
    audit_key = get_keyring().audit_key
    if audit_key is None:
        raise AuditUnavailable("AUDIT_HMAC_KEY is not configured")
    key, current_key_id = _mac_key(audit_key)
    values = dict(_BLANK_EVENT)
    if context:
        values.update(context)
    if fields:
        values.update(fields)
    if len(values) != len(_BLANK_EVENT):
        raise TypeError(f"unknown audit fields: {sorted(set(values) - set(_BLANK_EVENT))}")
    if user is not None and getattr(user, "is_authenticated", False):
        values["user_id"] = user.pk
        values["username"] = user.get_username()
    values.update(
        action=action,
        outcome=str(outcome),
        tenant_id=tenant.pk if tenant is not None else None,
        chain=chain_of(tenant),
        query=stored_query(query),
        detail=detail or {},
        key_id=current_key_id,
        client_ip=_normalise_ip(values["client_ip"]),
        user_agent=(values["user_agent"] or "")[:512],
    )
    for name in ("top_score", "latency_ms"):
        if values[name] is not None:
            values[name] = float(values[name])
    started = time.perf_counter()
    try:
        if connection.in_atomic_block or not connection.get_autocommit():
            with transaction.atomic():  # in the caller's transaction: its commit decides
                _lock_chain(values["chain"])
                _append(values, key)
        elif connection.vendor == "sqlite":
            _append_in_turn(values, key, durable)
        else:
            # PostgreSQL: no group. Each append waits only on its own chain's
            # advisory lock, which a retention purge or a bulk import may hold
            # a long time; a group would wait for it with every chain's records.
            _write([_Pending(values, key, durable)], durable)
    except Exception as exc:
        AUDIT_APPEND_FAILURES.inc()
        logger.error("audit event %s could not be recorded: %s", action, exc.__class__.__name__)
        raise AuditUnavailable(f"audit log unavailable ({exc.__class__.__name__})") from exc
    AUDIT_APPEND_SECONDS.observe(time.perf_counter() - started)
    if checkpoint_due(values["chain"], values["seq"]):
        # After the commit: a checkpoint signs a head that is already stored.
        checkpoint_after_append(chain=values["chain"], tenant=tenant, seq=values["seq"], head_hash=values["mac"])
    if settings.AUDIT_JSONL_PATH:
        mirrored = {name: values[name] for name in MAC_FIELDS}
        mirrored["mac"] = values["mac"]
        transaction.on_commit(lambda: mirror_event(mirrored))
    return AuditEvent.from_db(connection.alias, _EVENT_NAMES, [values[name] for name in _EVENT_NAMES])


# --- reading and exporting are themselves audited ----------------------------

def audit_view_record(*, user, tenants, context: dict | None, page: str, detail: dict | None = None) -> None:
    """One `audit.view` per page view, in the chain of each tenant whose records
    the page could show (the platform chain for a superuser's all-tenant view)."""
    detail = {"page": page, **(detail or {})}
    for tenant in (tenants or [None]):
        record_event(action="audit.view", tenant=tenant, user=user, context=context,
                     resource_type="audit_event", detail=detail)


def audit_export_write(*, out, tenant, user, context: dict | None, kind: str, events, description: dict,
                       recipient: str | None = None, via: str, created_by: str | None = None,
                       progress=None, extra_detail: dict | None = None):
    """Write a signed bundle to ``out`` (opened w+b) and record `audit.export`
    with its digest. Raises SigningUnavailable / ExportError / EnvelopeError."""
    from audit.ledger.export import write_bundle

    result = write_bundle(out, tenant=tenant, events=events, kind=kind, description=description,
                          created_by=created_by or (user.get_username() if user is not None else via),
                          recipient=recipient, progress=progress)
    manifest = result.manifest
    record_event(action="audit.export", tenant=tenant, user=user, context=context,
                 resource_type="audit_export", resource_id=result.bundle_sha256[:32],
                 detail={"via": via, "kind": kind, **description, "count": manifest["count"],
                         "first_seq": (manifest["first"] or {}).get("seq"),
                         "last_seq": (manifest["last"] or {}).get("seq"), "gaps": manifest["gaps"],
                         "bundle_sha256": result.bundle_sha256, "sealed_to": result.sealed_to,
                         **(extra_detail or {})})
    return result


def audit_export_denied(*, tenant, user, context: dict | None, via: str, reason: str) -> None:
    record_event(action="audit.export", outcome=Outcome.DENIED, tenant=tenant, user=user, context=context,
                 resource_type="audit_export", detail={"via": via, "reason": reason})
