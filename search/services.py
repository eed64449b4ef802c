"""Writes and searches of the search app. Every one records its audit events;
a search whose audit record cannot be written is refused (no result without a
record)."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from audit.models import Outcome
from audit.services import record_event
from search.engine import EngineUnavailable, get_engine
from search.index import Hit, best_rows, kb_indexes
from search.languages import language_name, script_name, unread_scripts
from search.models import Document, KnowledgeBase, new_revision
from search.parsing import Entry


class SearchInputError(ValueError):
    """Bad input a person can fix; the message says what."""


class LimitExceeded(SearchInputError):
    def __init__(self, limit: str, message: str):
        super().__init__(message)
        self.limit = limit


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
        raise SearchInputError("query must be a string")
    query = query.strip()
    if not query:
        raise SearchInputError("query is empty")
    if len(query) > settings.SEARCH_MAX_QUERY_CHARS:
        raise LimitExceeded("SEARCH_MAX_QUERY_CHARS",
                            f"query is {len(query)} characters; the limit is {settings.SEARCH_MAX_QUERY_CHARS}")
    return query


def check_top_k(top_k_value) -> int:
    if isinstance(top_k_value, bool) or not isinstance(top_k_value, int):
        raise SearchInputError("top_k must be an integer")
    if not 1 <= top_k_value <= settings.SEARCH_MAX_TOP_K:
        raise LimitExceeded("SEARCH_MAX_TOP_K", f"top_k must be between 1 and {settings.SEARCH_MAX_TOP_K}")
    return top_k_value


# --- knowledge bases and documents ---------------------------------------------------


def check_min_score(value) -> float | None:
    """A knowledge base's relevance floor: None (the model's default) or a cosine from 0 to 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise SearchInputError(_("The relevance floor must be a number from 0 to 1."))
    return float(value)


def kb_create(*, tenant, name: str, description: str = "", user, context: dict | None = None,
              min_score: float | None = None) -> KnowledgeBase:
    min_score = check_min_score(min_score)
    name = (name or "").strip()
    if not name:
        raise SearchInputError(_("name is empty"))
    if len(name) > 200:
        raise LimitExceeded("name", _("name is longer than 200 characters"))
    try:
        with transaction.atomic():
            kb = KnowledgeBase.objects.create(tenant=tenant, name=name, description=description[:500],
                                              created_by=user, min_score=min_score)
            record_event(action="kb.create", tenant=tenant, user=user, context=context,
                         resource_type="knowledge_base", resource_id=str(kb.pk), kb_id=kb.pk, kb_name=kb.name,
                         detail={"min_score": min_score} if min_score is not None else None)
    except IntegrityError:
        raise SearchInputError(_("a knowledge base named %(name)s already exists") % {"name": repr(name)}) from None
    return kb


def kb_delete(*, kb: KnowledgeBase, user, context: dict | None = None) -> None:
    with transaction.atomic():
        lines = kb.documents.count()
        record_event(action="kb.delete", tenant=kb.tenant, user=user, context=context,
                     resource_type="knowledge_base", resource_id=str(kb.pk), kb_id=kb.pk, kb_name=kb.name,
                     kb_lines=lines)
        kb_id = kb.pk
        kb.delete()
    kb_indexes.forget(kb_id)


def documents_import(*, kb: KnowledgeBase, entries: list[Entry], user, context: dict | None = None,
                     source: str = "", progress=None) -> ImportResult:
    """Embed new entries in batches, then store them all in one transaction.

    Duplicates (same text already in the knowledge base or earlier in the
    file) are skipped. Nothing is written unless every entry embedded.
    """
    if not entries:
        raise SearchInputError("no entries to import")
    if len(entries) > settings.KB_MAX_IMPORT_ENTRIES:
        raise LimitExceeded("KB_MAX_IMPORT_ENTRIES",
                            f"{len(entries)} entries; the limit is {settings.KB_MAX_IMPORT_ENTRIES} per import")
    for entry in entries:
        if not entry.text.strip():
            raise SearchInputError(f"entry {entry.line} is empty")
        if len(entry.text) > settings.KB_MAX_DOCUMENT_CHARS:
            raise LimitExceeded("KB_MAX_DOCUMENT_CHARS", f"entry {entry.line} is {len(entry.text)} characters; "
                                f"the limit is {settings.KB_MAX_DOCUMENT_CHARS}")
    engine = get_engine()
    if kb.model_id and kb.model_id != engine.model_id:
        raise ModelMismatch(f"knowledge base {kb.name!r} was built with {kb.model_id}; "
                            f"the portal serves {engine.model_id}")
    existing = set(kb.documents.values_list("digest", flat=True))
    fresh, skipped_lines = [], []
    for entry in entries:
        digest = text_digest(entry.text)
        if digest in existing:
            skipped_lines.append(entry.line)
            continue
        existing.add(digest)
        fresh.append((entry, digest))
    vectors, truncated = [], 0
    batch = settings.KB_IMPORT_BATCH
    for start in range(0, len(fresh), batch):
        chunk = fresh[start:start + batch]
        result = engine.embed([entry.text for entry, _ in chunk], kind="document")
        vectors.append(result.vectors)
        truncated += sum(result.truncated)
        if progress:
            progress(min(start + batch, len(fresh)), len(fresh))
    matrix = np.concatenate(vectors) if vectors else np.empty((0, engine.dimensions), np.float32)
    with transaction.atomic():
        locked = KnowledgeBase.objects.select_for_update().get(pk=kb.pk)
        if locked.model_id and locked.model_id != engine.model_id:
            raise ModelMismatch(f"knowledge base {kb.name!r} was built with {locked.model_id}")
        Document.objects.bulk_create([
            Document(tenant_id=kb.tenant_id, knowledge_base_id=kb.pk, text=entry.text, source_line=entry.line,
                     digest=digest, embedding=matrix[i].astype("<f4").tobytes())
            for i, (entry, digest) in enumerate(fresh)
        ], batch_size=1000)
        KnowledgeBase.objects.filter(pk=kb.pk).update(
            model_id=engine.model_id, dimensions=engine.dimensions, revision=new_revision())
        record_event(action="doc.import", tenant=kb.tenant, user=user, context=context,
                     resource_type="knowledge_base", resource_id=str(kb.pk), kb_id=kb.pk, kb_name=kb.name,
                     kb_lines=len(existing), model_id=engine.model_id,
                     detail={"added": len(fresh), "skipped_duplicates": len(skipped_lines),
                             "truncated": truncated, "source": source[:200]})
    kb.refresh_from_db()
    return ImportResult(added=len(fresh), skipped=len(skipped_lines), truncated=truncated,
                        skipped_lines=skipped_lines[:100])


def document_delete(*, document: Document, user, context: dict | None = None) -> None:
    kb = document.knowledge_base
    with transaction.atomic():
        record_event(action="doc.delete", tenant=kb.tenant, user=user, context=context,
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


def _check_or_record(action: str, query, top_k_value, **fields) -> tuple[str, int]:
    """Validated (query, top_k); a rejected request is recorded as a failure."""
    try:
        return check_query(query), check_top_k(top_k_value)
    except SearchInputError as exc:
        record_event(action=action, outcome=Outcome.FAILURE,
                     query=query[:settings.SEARCH_MAX_QUERY_CHARS] if isinstance(query, str) else "",
                     detail={"rejected": str(exc)[:200]}, **fields)
        raise


def search_kb(*, kb: KnowledgeBase, query: str, top_k: int, user, context: dict | None = None) -> SearchResult:
    """Top-k documents of ``kb`` for ``query``: audit first, model second."""
    started = time.perf_counter()
    query, top_k = _check_or_record("search.failed", query, top_k, tenant=kb.tenant, user=user, context=context,
                                    kb_id=kb.pk, kb_name=kb.name, resource_type="knowledge_base",
                                    resource_id=str(kb.pk))
    engine = get_engine()
    if kb.model_id and kb.model_id != engine.model_id:
        raise ModelMismatch(f"knowledge base {kb.name!r} was built with {kb.model_id}; "
                            f"the portal serves {engine.model_id}")
    line_count = len(kb_indexes.get(kb))
    common = dict(tenant=kb.tenant, user=user, context=context, query=query, kb_id=kb.pk, kb_name=kb.name,
                  kb_lines=line_count, resource_type="knowledge_base", resource_id=str(kb.pk),
                  model_id=engine.model_id)
    record_event(action="search.submitted", **common)
    try:
        embedded = engine.embed([query], kind="query")
        hits, line_count = kb_indexes.search(kb, embedded.vectors[0], top_k)
    except Exception as exc:
        record_event(action="search.failed", outcome=Outcome.FAILURE, **common,
                     latency_ms=(time.perf_counter() - started) * 1e3, detail={"error": exc.__class__.__name__})
        raise
    result = _finish(SearchResult(hits, (time.perf_counter() - started) * 1e3, engine.model_id, line_count,
                                  embedded.truncated[0]), engine, query, kb)
    record_event(action="search.completed", **{**common, **_search_fields(result)},
                 detail={"query_truncated": True} if result.query_truncated else None)
    return result


def radar_search(*, tenant, documents: list, query: str, top_k: int, user, context: dict | None = None
                 ) -> SearchResult:
    """Search lines given with the request; nothing about them is stored but the audit record."""
    started = time.perf_counter()
    query, top_k = _check_or_record("radar.failed", query, top_k, tenant=tenant, user=user, context=context,
                                    resource_type="radar")
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise SearchInputError("documents must be a list of strings")
    lines = [d.strip() for d in documents if d.strip()]
    if not lines:
        raise SearchInputError("documents is empty: give at least one non-empty line")
    if len(lines) > settings.RADAR_MAX_LINES:
        raise LimitExceeded("RADAR_MAX_LINES", f"{len(lines)} lines; the limit is {settings.RADAR_MAX_LINES}")
    longest = max(len(line) for line in lines)
    if longest > settings.KB_MAX_DOCUMENT_CHARS:
        raise LimitExceeded("KB_MAX_DOCUMENT_CHARS",
                            f"a line is {longest} characters; the limit is {settings.KB_MAX_DOCUMENT_CHARS}")
    engine = get_engine()
    common = dict(tenant=tenant, user=user, context=context, query=query, kb_lines=len(lines),
                  resource_type="radar", model_id=engine.model_id)
    record_event(action="radar.submitted", **common)
    try:
        docs = engine.embed(lines, kind="document")
        embedded = engine.embed([query], kind="query")
        order, scores = best_rows(docs.vectors, embedded.vectors[0], top_k)
    except Exception as exc:
        record_event(action="radar.failed", outcome=Outcome.FAILURE, **common,
                     latency_ms=(time.perf_counter() - started) * 1e3, detail={"error": exc.__class__.__name__})
        raise
    hits = [Hit(int(i) + 1, lines[i], float(s), int(i) + 1) for i, s in zip(order, scores)]
    result = _finish(SearchResult(hits, (time.perf_counter() - started) * 1e3, engine.model_id, len(lines),
                                  embedded.truncated[0]), engine, query)
    record_event(action="radar.completed", **{**common, **_search_fields(result)})
    return result


def embeddings_create(*, tenant, inputs, dimensions: int | None, user, context: dict | None = None):
    """Vectors for the OpenAI-compatible route; the inputs themselves are not stored."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise SearchInputError("input must be a non-empty string or a non-empty list of strings")
    if not all(isinstance(i, str) for i in inputs):
        raise SearchInputError("input must be strings; token arrays are not supported")
    if any(not i.strip() for i in inputs):
        raise SearchInputError("input holds an empty string")
    if len(inputs) > settings.EMBEDDINGS_MAX_INPUTS:
        raise LimitExceeded("EMBEDDINGS_MAX_INPUTS",
                            f"{len(inputs)} inputs; the limit is {settings.EMBEDDINGS_MAX_INPUTS} per request")
    longest = max(len(i) for i in inputs)
    if longest > settings.KB_MAX_DOCUMENT_CHARS:
        raise LimitExceeded("KB_MAX_DOCUMENT_CHARS",
                            f"an input is {longest} characters; the limit is {settings.KB_MAX_DOCUMENT_CHARS}")
    engine = get_engine()
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or not 1 <= dimensions <= engine.dimensions):
        raise SearchInputError(f"dimensions must be an integer from 1 to {engine.dimensions}")
    started = time.perf_counter()
    common = dict(tenant=tenant, user=user, context=context, resource_type="embeddings",
                  model_id=engine.model_id, kb_lines=len(inputs))
    try:
        result = engine.embed(inputs, kind="document", dimensions=dimensions)
    except Exception as exc:
        record_event(action="embeddings.create", outcome=Outcome.FAILURE, **common,
                     detail={"inputs": len(inputs), "error": exc.__class__.__name__})
        raise
    record_event(action="embeddings.create", **common, result_count=len(inputs),
                 latency_ms=round((time.perf_counter() - started) * 1e3, 3),
                 detail={"inputs": len(inputs), "tokens": sum(result.token_counts),
                         "dimensions": dimensions or engine.dimensions, "truncated": sum(result.truncated)})
    return result, engine
