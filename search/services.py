"""Writes and searches of the search app. Every one records its audit events;
a search whose audit record cannot be written is refused (no result without a
record)."""
from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field, replace

import numpy as np
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from audit.models import Outcome
from audit.ledger.services import AuditUnavailable, record_event
from portal.jobs import end_lost_jobs
from portal.scope import Scope, job_scope
from search.engine import EngineUnavailable, get_engine
from search.index import Hit, best_rows, ensure_hnsw_index, kb_index, store_documents
from search.languages import language_name, script_name, unread_scripts
from search.metrics import counted_search
from search.models import Document, ImportJob, KnowledgeBase, new_revision
from search.parsing import REFUSED_CHARACTERS, Entry, ImportFileError, detect_format, parse_entries


class SearchInputError(ValueError):
    """Bad input a person can fix; the message says what, in the request's
    language. The audit record of the refusal keeps ``code`` (a fixed name)
    and ``reason`` (the message in English) instead."""

    def __init__(self, message: str, *, code: str = "invalid_input", reason: str | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason or str(message)


class LimitExceeded(SearchInputError):
    """A size limit (``limit``: the setting's name, the refusal's fixed code) exceeded; ``status``: its HTTP status."""

    def __init__(self, limit: str, message: str, *, reason: str | None = None, status: int = 413):
        super().__init__(message, code=limit, reason=reason)
        self.limit = limit
        self.status = status


def _refused(template: str, params: dict | None = None, *, limit: str = "", code: str = "invalid_input",
             status: int = 413) -> SearchInputError:
    """The refusal for a ``gettext_noop`` template: translated for the person,
    in English for the audit record."""
    params = params or {}
    message, reason = _(template) % params, template % params
    if limit:
        return LimitExceeded(limit, message, reason=reason, status=status)
    return SearchInputError(message, code=code, reason=reason)


@dataclass(frozen=True)
class Limit:
    setting: str  # the setting that holds the limit; also the refusal's fixed code
    message: str  # a gettext_noop template: %(limit)d and the measured values
    status: int  # a size is 413; a parameter out of range is 400


# Every size limit the search app enforces, by what it limits.
LIMITS: dict[str, Limit] = {
    "query_chars": Limit("SEARCH_MAX_QUERY_CHARS", gettext_noop(
        "The query is too long: %(chars)d characters; the limit is %(limit)d."), 413),
    "top_k": Limit("SEARCH_MAX_TOP_K", gettext_noop("top_k must be between 1 and %(limit)d"), 400),
    "import_entries": Limit("KB_MAX_IMPORT_ENTRIES", gettext_noop(
        "%(count)d entries; the limit is %(limit)d per import"), 413),
    "entry_chars": Limit("KB_MAX_DOCUMENT_CHARS", gettext_noop(
        "entry %(line)d is %(chars)d characters; the limit is %(limit)d"), 413),
    "upload_bytes": Limit("KB_MAX_UPLOAD_BYTES", gettext_noop(
        "The file is %(size)d bytes; the limit is %(limit)d."), 413),
    "radar_lines": Limit("RADAR_MAX_LINES", gettext_noop("%(count)d lines; the limit is %(limit)d"), 413),
    "radar_line_chars": Limit("KB_MAX_DOCUMENT_CHARS", gettext_noop(
        "a line is %(chars)d characters; the limit is %(limit)d"), 413),
    "embedding_inputs": Limit("EMBEDDINGS_MAX_INPUTS", gettext_noop(
        "%(count)d inputs; the limit is %(limit)d per request"), 413),
    "embedding_chars": Limit("KB_MAX_DOCUMENT_CHARS", gettext_noop(
        "an input is %(chars)d characters; the limit is %(limit)d"), 413),
}


def check_limit(name: str, value: int, *, ceiling: int | None = None, floor: int | None = None, **params) -> None:
    """Refuse (LimitExceeded) when ``value`` is above LIMITS[name]'s setting
    (or ``ceiling``, where the caller has its own) or below ``floor``. The
    message gets ``params`` and the limit."""
    limit = LIMITS[name]
    ceiling = getattr(settings, limit.setting) if ceiling is None else ceiling
    if value > ceiling or (floor is not None and value < floor):
        raise _refused(limit.message, {**params, "limit": ceiling}, limit=limit.setting, status=limit.status)


def record_refusal(scope: Scope, action: str, exc: Exception, *, tenant=None, query="", detail: dict | None = None,
                   **fields) -> None:
    """Audit a refused request: outcome ``rejected``, the fixed code of what
    was refused and the English reason; nothing else is stored. In the
    acting tenant's chain unless ``tenant`` (the object's) is given."""
    record_event(action=action, outcome=Outcome.REJECTED, tenant=scope.tenant if tenant is None else tenant,
                 user=scope.user, context=scope.context,
                 query=query[:settings.SEARCH_MAX_QUERY_CHARS] if isinstance(query, str) else "",
                 detail={"rejected": getattr(exc, "code", "invalid_input"),
                         "reason": str(getattr(exc, "reason", exc))[:300], **(detail or {})}, **fields)


class Completion:
    """What an audited block reports for its completion record."""

    def __init__(self):
        self.fields: dict = {}
        self.detail: dict | None = None
        self.started = None  # what audited's ``start`` returned

    def report(self, *, detail: dict | None = None, **fields) -> None:
        self.fields, self.detail = fields, detail


@contextlib.contextmanager
def audited(scope: Scope, action: str, *, tenant=None, started: float, submitted: bool = True,
            failure_detail: dict | None = None, start=None, **fields):
    """The audit records around running the model, so no search forgets one.

    With ``submitted`` (searches): ``<action>.submitted`` before the block,
    ``<action>.failed`` (outcome failure, the error's class, the latency)
    if it raises, ``<action>.completed`` with what the block reported after.
    Without (embeddings): only ``action`` after, outcome failure or success.
    ``start()``, called before the submitted record is written, starts the
    model (``Engine.embed_start``) so that it runs meanwhile; the block gets
    its value as ``completion.started`` and takes no result from it before
    that record is stored. A start that fails is recorded as a failure too.
    A submitted record that cannot be written stops the search before any
    result is used (AuditUnavailable)."""
    common = dict(tenant=scope.tenant if tenant is None else tenant, user=scope.user, context=scope.context,
                  **fields)

    def record_failure(exc: Exception) -> None:
        latency = {"latency_ms": (time.perf_counter() - started) * 1e3} if submitted else {}
        record_event(action=f"{action}.failed" if submitted else action, outcome=Outcome.FAILURE, **common,
                     **latency, detail={**(failure_detail or {}), "error": exc.__class__.__name__})

    completion = Completion()
    if start is not None:
        try:
            completion.started = start()
        except Exception as exc:
            record_failure(exc)
            raise
    if submitted:
        record_event(action=f"{action}.submitted", **common)
    try:
        yield completion
    except Exception as exc:
        record_failure(exc)
        raise
    # A search's completion is not waited on to reach the disk: its durable
    # submitted record already proves the search happened (docs/decisions.md).
    record_event(action=f"{action}.completed" if submitted else action, **{**common, **completion.fields},
                 detail=completion.detail, durable=not submitted)


class ModelMismatch(Exception):
    """The knowledge base was built with another model than the one served."""


@dataclass
class SearchResult:
    hits: list[Hit]
    latency_ms: float
    model_id: str
    line_count: int
    query_truncated: bool = False
    min_score: float | None = None  # the relevance floor applied; None: none
    model: "ModelInfo | None" = None
    warnings: list["QueryWarning"] = field(default_factory=list)

    @property
    def strong_hits(self) -> list[Hit]:
        return [h for h in self.hits if not h.weak]

    @property
    def weak_hits(self) -> list[Hit]:
        return [h for h in self.hits if h.weak]


@dataclass(frozen=True)
class ModelInfo:
    """What the portal tells about the served model: its name, the languages
    it reads and its calibrated relevance floor (all from the sealed bundle)."""

    id: str
    languages: tuple[str, ...]
    relevance_floor: float | None

    @property
    def language_names(self) -> list[str]:
        """The languages' names in the active language."""
        return [language_name(code) for code in self.languages]

    def as_dict(self) -> dict:
        return {"id": self.id, "languages": list(self.languages), "relevance_floor": self.relevance_floor}


@dataclass(frozen=True)
class QueryWarning:
    """Something about a query that makes its results doubtful (the search still runs)."""

    code: str
    scripts: tuple[str, ...]
    languages: tuple[str, ...]

    @property
    def script_names(self) -> list[str]:
        return [script_name(s) for s in self.scripts]

    @property
    def message(self) -> str:  # the API's, in English like its other messages
        return (f"the query is written in {', '.join(self.scripts)}, which the model does not read "
                f"(languages: {', '.join(self.languages)}); results may be poor")

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "scripts": list(self.scripts),
                "languages": list(self.languages)}


def model_info(engine) -> ModelInfo:
    return ModelInfo(engine.model_id, tuple(engine.languages), engine.relevance_floor)


def served_model() -> ModelInfo | None:
    """The model this process serves, or None when it is not open (pages then say nothing about it)."""
    try:
        return model_info(get_engine())
    except EngineUnavailable:
        return None


def relevance_floor(engine, kb: KnowledgeBase | None = None) -> float | None:
    """The knowledge base's own floor, else the model's calibrated one, else the setting's (None: no floor)."""
    if kb is not None and kb.min_score is not None:
        return kb.min_score
    if engine.relevance_floor is not None:
        return engine.relevance_floor
    return settings.SEARCH_DEFAULT_MIN_SCORE


def mark_weak(hits: list[Hit], floor: float | None) -> list[Hit]:
    """The hits with ``weak`` set on those scoring under ``floor``; order and scores unchanged."""
    if floor is None:
        return hits
    return [replace(h, weak=h.score < floor) for h in hits]


def query_warnings(query: str, engine) -> list[QueryWarning]:
    """A warning when the query is written in a script none of the model's languages uses."""
    scripts = unread_scripts(query, engine.languages)
    if not scripts:
        return []
    return [QueryWarning("query_script_not_read", tuple(scripts), tuple(engine.languages))]


def _finish(result: SearchResult, engine, query: str, kb: KnowledgeBase | None = None) -> SearchResult:
    result.min_score = relevance_floor(engine, kb)
    result.hits = mark_weak(result.hits, result.min_score)
    result.model = model_info(engine)
    result.warnings = query_warnings(query, engine)
    return result


@dataclass
class ImportResult:
    added: int
    skipped: int
    truncated: int = 0
    skipped_lines: list[int] = field(default_factory=list)


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_query(query) -> str:
    if not isinstance(query, str):
        raise _refused(gettext_noop("query must be a string"), code="query_not_string")
    query = query.strip()
    if not query:
        raise _refused(gettext_noop("query is empty"), code="query_empty")
    check_limit("query_chars", len(query), chars=len(query))
    return query


def check_top_k(top_k_value) -> int:
    if isinstance(top_k_value, bool) or not isinstance(top_k_value, int):
        raise _refused(gettext_noop("top_k must be an integer"), code="top_k_not_integer")
    check_limit("top_k", top_k_value, floor=1)
    return top_k_value


# --- knowledge bases and documents ---------------------------------------------------


def check_min_score(value) -> float | None:
    """A knowledge base's relevance floor: None (the model's default) or a cosine from 0 to 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise SearchInputError(_("The relevance floor must be a number from 0 to 1."))
    return float(value)


def kb_create(*, scope: Scope, name: str, description: str = "", min_score: float | None = None
              ) -> KnowledgeBase:
    """A knowledge base in the acting tenant."""
    tenant = scope.tenant
    min_score = check_min_score(min_score)
    name = (name or "").strip()
    if not name:
        raise SearchInputError(_("name is empty"))
    if len(name) > 200:
        raise LimitExceeded("name", _("name is longer than 200 characters"))
    try:
        with transaction.atomic():
            kb = KnowledgeBase.objects.create(tenant=tenant, name=name, description=description[:500],
                                              created_by=_person(scope), min_score=min_score)
            record_event(action="kb.create", tenant=tenant, user=scope.user, context=scope.context,
                         resource_type="knowledge_base", resource_id=str(kb.pk), kb_id=kb.pk, kb_name=kb.name,
                         detail={"min_score": min_score} if min_score is not None else None)
    except IntegrityError:
        raise SearchInputError(_("a knowledge base named %(name)s already exists") % {"name": repr(name)}) from None
    return kb


def kb_delete(*, scope: Scope, kb: KnowledgeBase) -> None:
    with transaction.atomic():
        lines = kb.documents.count()
        record_event(action="kb.delete", tenant=kb.tenant, user=scope.user, context=scope.context,
                     resource_type="knowledge_base", resource_id=str(kb.pk), kb_id=kb.pk, kb_name=kb.name,
                     kb_lines=lines)
        kb_id = kb.pk
        kb.delete()
    kb_index().forget(kb_id)


def documents_import(*, scope: Scope, kb: KnowledgeBase, entries: list[Entry], source: str = "",
                     progress=None) -> ImportResult:
    """Embed and store new entries; all or nothing.

    Duplicates (same text already in the knowledge base or earlier in the
    file) are skipped. Nothing is written unless every entry embedded. Two
    imports into one knowledge base at once both succeed: the second waits
    for the first and skips whatever it stored. A refused import is audited
    (outcome ``rejected``) and stores nothing.

    On PostgreSQL the entries are embedded and written (COPY) a batch at a
    time inside one transaction, so memory does not grow with the file's
    size; elsewhere (SQLite, whose one write lock the searches' audit records
    need too) they are all embedded first and written in one short
    transaction.
    """
    try:
        _check_entries(entries)
    except SearchInputError as exc:
        record_refusal(scope, "doc.import", exc, detail={"source": source[:200]}, **_kb_fields(kb))
        raise
    engine = get_engine()
    _check_model(kb, engine)
    fresh, skipped_lines = [], []
    seen = set()
    for entry in entries:
        digest = text_digest(entry.text)
        if digest in seen:
            skipped_lines.append(entry.line)
            continue
        seen.add(digest)
        fresh.append((entry, digest))
    if connection.vendor == "postgresql":
        with transaction.atomic():
            added, already, truncated = _write_in_batches(kb, engine, fresh, source, progress)
            skipped_lines.extend(already)
            _record_import(scope, kb, engine, source, added, len(skipped_lines), truncated)
    else:
        # Embedded before the transaction: SQLite's one write lock is taken
        # when it begins, and the searches' audit records need it too.
        todo, already, matrix, truncated = _embed_new(kb, engine, fresh, progress)
        with transaction.atomic():
            added, raced = _store_embedded(kb, engine, todo, matrix, source)
            skipped_lines.extend(already + raced)
            _record_import(scope, kb, engine, source, added, len(skipped_lines), truncated)
    kb.refresh_from_db()
    return ImportResult(added=added, skipped=len(skipped_lines), truncated=truncated,
                        skipped_lines=sorted(skipped_lines)[:100])


def _record_import(scope: Scope, kb: KnowledgeBase, engine, source: str, added: int, skipped: int,
                   truncated: int) -> None:
    """The end of an import, in its transaction: the index, the knowledge base's revision, the record."""
    if added:
        # After the rows: the first import of a size builds the index over
        # them at once, which is faster than growing it row by row.
        ensure_hnsw_index(engine.dimensions)
    if added or not kb.model_id:
        KnowledgeBase.objects.filter(pk=kb.pk).update(
            model_id=engine.model_id, dimensions=engine.dimensions, revision=new_revision())
    record_event(action="doc.import", user=scope.user, context=scope.context, **_kb_fields(kb),
                 kb_lines=Document.objects.filter(tenant_id=kb.tenant_id, knowledge_base_id=kb.pk).count(),
                 model_id=engine.model_id,
                 detail={"added": added, "skipped_duplicates": skipped, "truncated": truncated,
                         "source": source[:200]})


def _check_model(kb: KnowledgeBase, engine) -> None:
    if kb.model_id and kb.model_id != engine.model_id:
        raise ModelMismatch(f"knowledge base {kb.name!r} was built with {kb.model_id}; "
                            f"the portal serves {engine.model_id}")


def _lock_kb(kb: KnowledgeBase, engine) -> None:
    """Serialise imports into ``kb`` until the transaction ends, and check its
    model again under the lock."""
    locked = KnowledgeBase.objects.select_for_update().get(pk=kb.pk)
    _check_model(locked, engine)


def _stored(kb: KnowledgeBase, digests: list[str]) -> set[str]:
    """Which of these digests the knowledge base holds already."""
    if not digests:
        return set()
    return set(Document.objects.filter(tenant_id=kb.tenant_id, knowledge_base_id=kb.pk, digest__in=digests)
               .values_list("digest", flat=True))


def _embed(engine, pairs: list, progress=None) -> tuple[np.ndarray, int]:
    """Document vectors of (entry, digest) pairs, KB_IMPORT_BATCH at a time
    (reporting each to ``progress``); and how many were cut."""
    vectors, truncated = [], 0
    for start in range(0, len(pairs), settings.KB_IMPORT_BATCH):
        result = engine.embed([entry.text for entry, _ in pairs[start:start + settings.KB_IMPORT_BATCH]],
                              kind="document")
        vectors.append(result.vectors)
        truncated += sum(result.truncated)
        if progress:
            progress(min(start + settings.KB_IMPORT_BATCH, len(pairs)), len(pairs))
    return (np.concatenate(vectors) if vectors else np.empty((0, engine.dimensions), np.float32)), truncated


def _documents(kb: KnowledgeBase, pairs: list, source: str) -> list[Document]:
    return [Document(tenant_id=kb.tenant_id, knowledge_base_id=kb.pk, text=entry.text, source_line=entry.line,
                     source_name=source[:200], digest=digest) for entry, digest in pairs]


def _embed_new(kb, engine, fresh, progress) -> tuple[list, list[int], np.ndarray, int]:
    """The entries the knowledge base does not hold, their vectors, the lines
    it holds already and how many were cut; reporting progress."""
    known = set(Document.objects.filter(tenant_id=kb.tenant_id, knowledge_base_id=kb.pk)
                .values_list("digest", flat=True))
    todo = [(entry, digest) for entry, digest in fresh if digest not in known]
    matrix, truncated = _embed(engine, todo, progress)
    return todo, [entry.line for entry, digest in fresh if digest in known], matrix, truncated


def _store_embedded(kb, engine, todo, matrix, source) -> tuple[int, list[int]]:
    """Lock and store embedded entries; (added, lines another import stored meanwhile)."""
    _lock_kb(kb, engine)
    # Another import may have stored some of these since they were read
    # (a double-clicked upload): under the lock, skip those too.
    stored = _stored(kb, [d for _, d in todo])
    keep = [i for i, (_, digest) in enumerate(todo) if digest not in stored]
    store_documents(_documents(kb, [todo[i] for i in keep], source), matrix[keep])
    return len(keep), [entry.line for entry, digest in todo if digest in stored]


def _write_in_batches(kb, engine, fresh, source, progress) -> tuple[int, list[int], int]:
    """PostgreSQL: lock, then for each KB_IMPORT_STORE_BATCH entries skip the
    stored ones, embed the rest and COPY them, in the caller's transaction:
    memory holds one batch, and nothing is visible until every batch is in.
    Searches go on reading the committed rows meanwhile. (added, lines
    already stored, truncated)."""
    _lock_kb(kb, engine)
    added, already, truncated = 0, [], 0
    step = settings.KB_IMPORT_STORE_BATCH
    for start in range(0, len(fresh), step):
        chunk = fresh[start:start + step]
        stored = _stored(kb, [d for _, d in chunk])
        todo = [(entry, digest) for entry, digest in chunk if digest not in stored]
        already.extend(entry.line for entry, digest in chunk if digest in stored)
        vectors, cut = _embed(engine, todo)
        store_documents(_documents(kb, todo, source), vectors)
        added, truncated = added + len(todo), truncated + cut
        if progress:
            progress(min(start + step, len(fresh)), len(fresh))
    return added, already, truncated


def _kb_fields(kb: KnowledgeBase) -> dict:
    return dict(tenant=kb.tenant, resource_type="knowledge_base", resource_id=str(kb.pk), kb_id=kb.pk,
                kb_name=kb.name)


def _person(scope: Scope):
    """The scope's user as a row to point at (created_by); None for no one or an anonymous caller."""
    return scope.user if getattr(scope.user, "is_authenticated", False) else None


def _check_entries(entries: list[Entry]) -> None:
    if not entries:
        raise _refused(gettext_noop("no entries to import"), code="no_entries")
    check_limit("import_entries", len(entries), count=len(entries))
    for entry in entries:
        if not entry.text.strip():
            raise _refused(gettext_noop("entry %(line)d is empty"), {"line": entry.line}, code="empty_entry")
        check_limit("entry_chars", len(entry.text), line=entry.line, chars=len(entry.text))
        if REFUSED_CHARACTERS.search(entry.text):
            raise _refused(gettext_noop("entry %(line)d contains a NUL character: only text can be imported"),
                           {"line": entry.line}, code="nul_character")


def documents_add(*, scope: Scope, kb: KnowledgeBase, items: list, source: str = "api") -> ImportResult:
    """Import documents given as JSON: strings, or objects with a "text" string."""
    entries = []
    try:
        for n, item in enumerate(items):
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise _refused(gettext_noop('documents[%(index)d] must be a string or an object with a "text" '
                                            'string'), {"index": n}, code="invalid_document")
            if REFUSED_CHARACTERS.search(text):
                raise _refused(gettext_noop("documents[%(index)d] contains a NUL character: only text can be "
                                            "imported"), {"index": n}, code="nul_character")
            entries.append(Entry(n + 1, text.strip()))
    except SearchInputError as exc:
        record_refusal(scope, "doc.import", exc, detail={"source": source[:200]}, **_kb_fields(kb))
        raise
    return documents_import(scope=scope, kb=kb, entries=entries, source=source)


def _read_upload(*, scope: Scope, kb: KnowledgeBase, name: str, file, size: int, max_bytes: int | None,
                 fmt: str | None) -> tuple[bytes, str, list[Entry]]:
    """The file's bytes, format and entries; a refused file (none, too large,
    not UTF-8, malformed) is audited and raises."""
    max_bytes = settings.KB_MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    try:
        if file is None:
            raise _refused(gettext_noop("Choose a file to upload."), code="no_file")
        check_limit("upload_bytes", size, ceiling=max_bytes, size=size)
        data, fmt = file.read(), fmt or detect_format(name)
        entries = parse_entries(data, fmt, max_entries=settings.KB_MAX_IMPORT_ENTRIES,
                                max_chars=settings.KB_MAX_DOCUMENT_CHARS)
    except (SearchInputError, ImportFileError) as exc:
        record_refusal(scope, "doc.import", exc, detail={"source": (name or "")[:200]}, **_kb_fields(kb))
        raise
    return data, fmt, entries


def documents_import_file(*, scope: Scope, kb: KnowledgeBase, name: str, file, size: int,
                          max_bytes: int | None = None, fmt: str | None = None, progress=None) -> ImportResult:
    """Import a file (anything with ``read()``; None: no file was sent) of
    ``size`` bytes, in this process. A refused file (too large, not UTF-8,
    malformed) is audited and stores nothing."""
    _, _, entries = _read_upload(scope=scope, kb=kb, name=name, file=file, size=size, max_bytes=max_bytes, fmt=fmt)
    return documents_import(scope=scope, kb=kb, entries=entries, source=name, progress=progress)


# --- imports as background jobs --------------------------------------------------------


def import_job_submit(*, scope: Scope, kb: KnowledgeBase, name: str, file, size: int,
                      fmt: str | None = None) -> ImportJob:
    """Check a file now (a refused one answers at once, audited, and queues
    nothing), then queue its import for the task worker: the job, its task
    and the ``doc.import.submitted`` record are written in one transaction."""
    from search.tasks import run_import

    data, fmt, entries = _read_upload(scope=scope, kb=kb, name=name, file=file, size=size, max_bytes=None, fmt=fmt)
    try:
        _check_entries(entries)
    except SearchInputError as exc:
        record_refusal(scope, "doc.import", exc, detail={"source": (name or "")[:200]}, **_kb_fields(kb))
        raise
    with transaction.atomic():
        job = ImportJob.objects.create(tenant_id=kb.tenant_id, knowledge_base=kb, created_by=_person(scope),
                                       source_name=(name or "")[:200], format=fmt, payload=data, total=len(entries),
                                       context=scope.context)
        record_event(action="doc.import.submitted", user=scope.user, context=scope.context, **_kb_fields(kb),
                     detail={"job": job.pk, "entries": len(entries), "source": job.source_name})
        run_import.enqueue(job.pk)
    return job


def _job_scope(job: ImportJob) -> Scope:
    return job_scope(tenant=job.tenant, user=job.created_by, context=job.context)


def import_job_run(job_id: int) -> None:
    """Run one queued import (the task worker calls this). Claims the job so a
    retried task never imports twice; ends with ``doc.import`` (written by
    documents_import) or ``doc.import.failed``, and drops the file's bytes."""
    import_jobs_fail_lost()
    now = timezone.now()
    claimed = ImportJob.objects.filter(pk=job_id, status=ImportJob.Status.QUEUED).update(
        status=ImportJob.Status.RUNNING, started_at=now, heartbeat_at=now)
    if not claimed:
        return
    job = ImportJob.objects.select_related("tenant", "knowledge_base", "created_by").get(pk=job_id)
    scope = _job_scope(job)

    # Progress is written on a connection of its own: on PostgreSQL the
    # import's rows go in one transaction, and the page must see the count
    # while it is open.
    side = connections.create_connection(DEFAULT_DB_ALIAS)

    def progress(done: int, total: int) -> None:
        with side.cursor() as cursor:
            cursor.execute(f"UPDATE {ImportJob._meta.db_table} SET done = %s, heartbeat_at = %s WHERE id = %s",
                           [done, timezone.now(), job.pk])

    try:
        entries = parse_entries(bytes(job.payload), job.format, max_entries=settings.KB_MAX_IMPORT_ENTRIES,
                                max_chars=settings.KB_MAX_DOCUMENT_CHARS)
        result = documents_import(scope=scope, kb=job.knowledge_base, entries=entries, source=job.source_name,
                                  progress=progress)
    except Exception as exc:  # noqa: BLE001  the job records every failure; the worker goes on
        message = str(exc) if isinstance(exc, (SearchInputError, ImportFileError, ModelMismatch)) \
            else exc.__class__.__name__
        ImportJob.objects.filter(pk=job.pk).update(status=ImportJob.Status.FAILED, error=message[:500], payload=None,
                                                   finished_at=timezone.now())
        try:
            record_event(action="doc.import.failed", outcome=Outcome.FAILURE, user=scope.user, context=scope.context,
                         **_kb_fields(job.knowledge_base),
                         detail={"job": job.pk, "error": exc.__class__.__name__, "source": job.source_name})
        except AuditUnavailable:
            pass  # record_event has logged it
        raise
    finally:
        side.close()
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportJob.Status.SUCCEEDED, done=job.total, added=result.added, skipped_duplicates=result.skipped,
        truncated=result.truncated, payload=None, finished_at=timezone.now())


LOST_WORKER = gettext_noop("the import worker stopped before the import ended; nothing was stored: "
                           "send the file again")


def import_jobs_fail_lost(jobs=None) -> int:
    """Mark failed (and audit) the running imports whose worker has not
    reported for IMPORT_JOB_STALE_SECONDS (portal.jobs.end_lost_jobs); given
    ``jobs`` (rows a reader holds), only those, updated in place. How many
    were ended."""
    def record(job):
        scope = _job_scope(job)
        record_event(action="doc.import.failed", outcome=Outcome.FAILURE, user=scope.user, context=scope.context,
                     **_kb_fields(job.knowledge_base),
                     detail={"job": job.pk, "error": "WorkerLost", "source": job.source_name})

    running = ImportJob.objects.filter(status=ImportJob.Status.RUNNING).select_related(
        "tenant", "knowledge_base", "created_by")
    return end_lost_jobs(running, stale_seconds=settings.IMPORT_JOB_STALE_SECONDS,
                         end={"status": ImportJob.Status.FAILED, "error": LOST_WORKER, "payload": None},
                         record=record, jobs=jobs)


def document_delete(*, scope: Scope, document: Document) -> None:
    kb = document.knowledge_base
    with transaction.atomic():
        record_event(action="doc.delete", tenant=kb.tenant, user=scope.user, context=scope.context,
                     resource_type="document", resource_id=str(document.pk), kb_id=kb.pk, kb_name=kb.name,
                     detail={"digest": document.digest, "source_line": document.source_line})
        document.delete()
        KnowledgeBase.objects.filter(pk=kb.pk).update(revision=new_revision())


# --- searching ------------------------------------------------------------------------


def _search_fields(result: SearchResult) -> dict:
    return {
        "result_count": len(result.hits),
        "top_score": result.hits[0].score if result.hits else None,
        "latency_ms": round(result.latency_ms, 3),
        "model_id": result.model_id,
    }


def record_form_refusal(scope: Scope, action: str, resource_type: str, fields: list[str]) -> None:
    """Audit a page's form refused before any service ran (a choice not offered)."""
    reason = "invalid form fields: " + ", ".join(sorted(map(str, fields)))
    record_refusal(scope, action, SearchInputError(reason, code="invalid_request"), resource_type=resource_type)


def _check_or_record(scope: Scope, action: str, query, top_k_value, **fields) -> tuple[str, int]:
    """Validated (query, top_k); a refused request is recorded (outcome ``rejected``)."""
    try:
        return check_query(query), check_top_k(top_k_value)
    except SearchInputError as exc:
        record_refusal(scope, action, exc, query=query, **fields)
        raise


@counted_search("kb")
def search_kb(*, scope: Scope, kb: KnowledgeBase, query: str, top_k: int) -> SearchResult:
    """Top-k documents of ``kb`` for ``query``: audit first, model second."""
    started = time.perf_counter()
    query, top_k = _check_or_record(scope, "search.failed", query, top_k, tenant=kb.tenant, kb_id=kb.pk,
                                    kb_name=kb.name, resource_type="knowledge_base", resource_id=str(kb.pk))
    engine = get_engine()
    if kb.model_id and kb.model_id != engine.model_id:
        raise ModelMismatch(f"knowledge base {kb.name!r} was built with {kb.model_id}; "
                            f"the portal serves {engine.model_id}")
    # The model runs while the submitted record is written; its result is
    # used only once that record is stored (audited raises before otherwise).
    with audited(scope, "search", tenant=kb.tenant, started=started, query=query, kb_id=kb.pk, kb_name=kb.name,
                 kb_lines=kb_index().count(kb), resource_type="knowledge_base", resource_id=str(kb.pk),
                 model_id=engine.model_id, start=lambda: engine.embed_start([query], kind="query")) as completion:
        embedded = completion.started.result()
        hits, line_count = kb_index().search(kb, embedded.vectors[0], top_k)
        result = _finish(SearchResult(hits, (time.perf_counter() - started) * 1e3, engine.model_id, line_count,
                                      embedded.truncated[0]), engine, query, kb)
        completion.report(**_search_fields(result),
                          detail={"query_truncated": True} if result.query_truncated else None)
    return result


@counted_search("radar")
def radar_search(*, scope: Scope, documents: list, query: str, top_k: int) -> SearchResult:
    """Search lines given with the request; nothing about them is stored but the audit record."""
    started = time.perf_counter()
    query, top_k = _check_or_record(scope, "radar.failed", query, top_k, resource_type="radar")
    try:
        lines = _radar_lines(documents)
    except SearchInputError as exc:
        record_refusal(scope, "radar.failed", exc, query=query, resource_type="radar")
        raise
    engine = get_engine()
    with audited(scope, "radar", started=started, query=query, kb_lines=len(lines), resource_type="radar",
                 model_id=engine.model_id,
                 start=lambda: (engine.embed_start(lines, kind="document"),
                                engine.embed_start([query], kind="query"))) as completion:
        docs, embedded = (pending.result() for pending in completion.started)
        order, scores = best_rows(docs.vectors, embedded.vectors[0], top_k)
        hits = [Hit(int(i) + 1, lines[i], float(s), int(i) + 1) for i, s in zip(order, scores)]
        result = _finish(SearchResult(hits, (time.perf_counter() - started) * 1e3, engine.model_id, len(lines),
                                      embedded.truncated[0]), engine, query)
        completion.report(**_search_fields(result))
    return result


def _radar_lines(documents) -> list[str]:
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise _refused(gettext_noop("documents must be a list of strings"), code="documents_not_strings")
    lines = [d.strip() for d in documents if d.strip()]
    if not lines:
        raise _refused(gettext_noop("documents is empty: give at least one non-empty line"), code="documents_empty")
    check_limit("radar_lines", len(lines), count=len(lines))
    longest = max(len(line) for line in lines)
    check_limit("radar_line_chars", longest, chars=longest)
    return lines


def _check_embedding_inputs(inputs) -> list[str]:
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise _refused(gettext_noop("input must be a non-empty string or a non-empty list of strings"),
                       code="input_empty")
    if not all(isinstance(i, str) for i in inputs):
        raise _refused(gettext_noop("input must be strings; token arrays are not supported"),
                       code="input_not_strings")
    if any(not i.strip() for i in inputs):
        raise _refused(gettext_noop("input holds an empty string"), code="input_empty_string")
    check_limit("embedding_inputs", len(inputs), count=len(inputs))
    longest = max(len(i) for i in inputs)
    check_limit("embedding_chars", longest, chars=longest)
    return inputs


def embeddings_create(*, scope: Scope, inputs, dimensions: int | None):
    """Vectors for the OpenAI-compatible route; the inputs themselves are not stored."""
    try:
        inputs = _check_embedding_inputs(inputs)
        engine = get_engine()
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                       or not 1 <= dimensions <= engine.dimensions):
            raise _refused(gettext_noop("dimensions must be an integer from 1 to %(limit)d"),
                           {"limit": engine.dimensions}, code="dimensions_out_of_range")
    except SearchInputError as exc:
        record_refusal(scope, "embeddings.create", exc, resource_type="embeddings")
        raise
    started = time.perf_counter()
    with audited(scope, "embeddings.create", started=started, submitted=False,
                 failure_detail={"inputs": len(inputs)}, resource_type="embeddings", model_id=engine.model_id,
                 kb_lines=len(inputs)) as completion:
        result = engine.embed(inputs, kind="document", dimensions=dimensions)
        completion.report(result_count=len(inputs), latency_ms=round((time.perf_counter() - started) * 1e3, 3),
                          detail={"inputs": len(inputs), "tokens": sum(result.token_counts),
                                  "dimensions": dimensions or engine.dimensions,
                                  "truncated": sum(result.truncated)})
    return result, engine
