"""The vector index of the knowledge bases, chosen by the database.

SQLite: exact cosine top-k over a per-process matrix for each knowledge base
(``KbIndexCache``). Embeddings are L2-normalised, so cosine is a dot product.
The matrix of a knowledge base is loaded on first use and cached under its
`revision`, a random token replaced by every import or delete: a worker never
serves stale rows, not even when a deleted knowledge base's id is reused.
Only the most recently used knowledge bases stay cached.

PostgreSQL: the vectors stay in the database (pgvector, ``PgVectorIndex``);
a worker holds nothing but a row count per knowledge base revision. A small
knowledge base is scanned exactly; a large one is searched through an HNSW
index over every document of its dimension (docs/decisions.md).

``kb_index()`` is the index for the database in use; the search service asks
it, never a view.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from search.models import Document


@dataclass(frozen=True)
class Hit:
    id: int
    text: str
    score: float
    source_line: int | None
    weak: bool = False  # under the relevance floor: shown folded, flagged in the API

    @property
    def bar_percent(self) -> int:
        """Width of the score bar: cosine below 0 shows as an empty bar."""
        return max(0, min(100, round(self.score * 100)))


@dataclass
class KbMatrix:
    revision: str
    ids: np.ndarray          # int64, (n,)
    matrix: np.ndarray       # float32, (n, d)
    texts: list[str]
    lines: list[int | None]

    def __len__(self) -> int:
        return len(self.ids)


def best_rows(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and scores of the k best rows, best first."""
    if matrix.shape[0] == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = matrix @ query
    k = min(k, scores.shape[0])
    if k < scores.shape[0]:
        candidates = np.argpartition(-scores, k - 1)[:k]
    else:
        candidates = np.arange(scores.shape[0])
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    return order, scores[order]


class KbIndexCache:
    def __init__(self, max_entries: int = 64):
        self._entries: OrderedDict[tuple[int, str], KbMatrix] = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries

    def get(self, kb) -> KbMatrix:
        key = (kb.pk, kb.revision)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            entry = self._load(kb)
            for stale in [k for k in self._entries if k[0] == kb.pk]:
                del self._entries[stale]
            self._entries[key] = entry
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
            return entry

    def count(self, kb) -> int:
        return len(self.get(kb))

    def forget(self, kb_id: int) -> None:
        with self._lock:
            for stale in [k for k in self._entries if k[0] == kb_id]:
                del self._entries[stale]

    @staticmethod
    def _load(kb) -> KbMatrix:
        rows = list(Document.objects.filter(tenant_id=kb.tenant_id, knowledge_base=kb).order_by("id")
                    .values_list("id", "text", "source_line", "embedding"))
        dims = kb.dimensions or 0
        matrix = np.empty((len(rows), dims), dtype=np.float32)
        for i, row in enumerate(rows):
            matrix[i] = np.frombuffer(row[3], dtype="<f4")
        return KbMatrix(
            revision=kb.revision,
            ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
            matrix=matrix,
            texts=[r[1] for r in rows],
            lines=[r[2] for r in rows],
        )

    def search(self, kb, query_vector: np.ndarray, k: int) -> tuple[list[Hit], int]:
        entry = self.get(kb)
        order, scores = best_rows(entry.matrix, query_vector.astype(np.float32, copy=False), k)
        hits = [Hit(int(entry.ids[i]), entry.texts[i], float(s), entry.lines[i]) for i, s in zip(order, scores)]
        return hits, len(entry)


kb_indexes = KbIndexCache()


# --- PostgreSQL: pgvector ------------------------------------------------------------

# pgvector indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000.
# The column holds full-precision vectors of any size; the HNSW index is built
# on a cast to the knowledge base's size, as `vector` where it fits and as
# `halfvec` above, and the final scores are always computed on the full vector.
VECTOR_INDEX_MAX_DIMENSIONS = 2000
HALFVEC_INDEX_MAX_DIMENSIONS = 4000


def index_type(dimensions: int) -> str | None:
    """The type the HNSW index of this size is built on; None: too large to index (searched exactly)."""
    if dimensions <= VECTOR_INDEX_MAX_DIMENSIONS:
        return "vector"
    if dimensions <= HALFVEC_INDEX_MAX_DIMENSIONS:
        return "halfvec"
    return None


def hnsw_index_name(dimensions: int) -> str:
    return f"search_document_hnsw_{dimensions}"


def ensure_hnsw_index(dimensions: int) -> None:
    """Create the HNSW index for documents of ``dimensions`` if it is missing (PostgreSQL).

    Called by an import after it stores rows of that size, in its
    transaction: the first import of a size builds the index over its rows
    at once (faster than growing it row by row); later imports maintain it,
    and searches keep reading while they do (a build blocks other writes to
    the table, not reads). A transaction advisory lock serialises two first
    imports of the same size; an index that exists is not asked for again,
    so later imports take no table lock here."""
    kind = index_type(dimensions)
    if connection.vendor != "postgresql" or kind is None or dimensions in _indexed_sizes:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [0x76656374, dimensions])
        cursor.execute("SELECT 1 FROM pg_class WHERE relname = %s", [hnsw_index_name(dimensions)])
        if cursor.fetchone():
            transaction.on_commit(lambda: _indexed_sizes.add(dimensions))
            return
        # CREATE INDEX refuses to run while the transaction has deferred
        # foreign-key checks pending (Django's are deferred): run them now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {hnsw_index_name(dimensions)} ON search_document "
            f"USING hnsw ((vector::{kind}({dimensions})) {kind}_cosine_ops) "
            f"WITH (m = {int(settings.SEARCH_HNSW_M)}, ef_construction = {int(settings.SEARCH_HNSW_EF_CONSTRUCTION)}) "
            f"WHERE vector_dims(vector) = {dimensions}")
    transaction.on_commit(lambda: _indexed_sizes.add(dimensions))


_indexed_sizes: set[int] = set()


def vector_literal(vector: np.ndarray) -> str:
    """A vector as pgvector's text form; float32 values printed exactly."""
    return "[" + ",".join(repr(float(v)) for v in np.asarray(vector, dtype=np.float32)) + "]"


# Exact: the plain column, which no index covers, so PostgreSQL reads the
# knowledge base's rows (by its btree) and sorts them.
_EXACT_SQL = """
SELECT id, text, source_line, 1 - (vector <=> %(q)s::vector) AS score
FROM search_document
WHERE tenant_id = %(tenant)s AND knowledge_base_id = %(kb)s
ORDER BY vector <=> %(q)s::vector, id
LIMIT %(k)s"""

# Through the HNSW index: the expression and the predicate are the index's, so
# the planner can use it; pgvector 0.8's iterative scan goes on until enough
# rows of this knowledge base are found. The scan's order is relaxed and, for
# halfvec, approximate: it supplies more candidates than asked for, and the
# best k of them by the full vectors are returned (bench/vector_search.py).
_HNSW_SQL = """
WITH nearest AS MATERIALIZED (
    SELECT id, text, source_line, vector
    FROM search_document
    WHERE tenant_id = %(tenant)s AND knowledge_base_id = %(kb)s AND vector_dims(vector) = {dims}
    ORDER BY (vector::{kind}({dims})) <=> %(q)s::{kind}({dims})
    LIMIT %(candidates)s
)
SELECT id, text, source_line, 1 - (vector <=> %(q)s::vector) AS score
FROM nearest
ORDER BY score DESC, id
LIMIT %(k)s"""


def hnsw_candidates(k: int) -> int:
    """Rows the index scan supplies for a top-k: four times k, within ef_search."""
    return max(k, min(4 * k, settings.SEARCH_HNSW_EF_SEARCH))


class PgVectorIndex:
    """The knowledge bases' vectors where they are stored, in PostgreSQL."""

    def __init__(self, max_entries: int = 4096):
        self._counts: OrderedDict[tuple[int, str], int] = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries

    def count(self, kb) -> int:
        """Documents in ``kb``, counted once per revision."""
        key = (kb.pk, kb.revision)
        with self._lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                return self._counts[key]
        count = Document.objects.filter(tenant_id=kb.tenant_id, knowledge_base_id=kb.pk).count()
        with self._lock:
            self._counts[key] = count
            while len(self._counts) > self._max_entries:
                self._counts.popitem(last=False)
        return count

    def forget(self, kb_id: int) -> None:
        with self._lock:
            for stale in [k for k in self._counts if k[0] == kb_id]:
                del self._counts[stale]

    def search(self, kb, query_vector: np.ndarray, k: int) -> tuple[list[Hit], int]:
        count = self.count(kb)
        if count == 0 or k <= 0:
            return [], count
        dims = int(kb.dimensions or len(query_vector))
        kind = index_type(dims)
        if count <= settings.SEARCH_EXACT_MAX_ROWS or kind is None:
            sql = _EXACT_SQL
        else:
            sql = _HNSW_SQL.format(dims=dims, kind=kind)
        params = {"q": vector_literal(query_vector), "tenant": kb.tenant_id, "kb": kb.pk, "k": int(k),
                  "candidates": hnsw_candidates(int(k))}
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return [Hit(int(i), text, float(score), line) for i, text, line, score in rows], count


pg_vector_index = PgVectorIndex()


def kb_index():
    """The index for the database in use: pgvector on PostgreSQL, numpy elsewhere."""
    return pg_vector_index if connection.vendor == "postgresql" else kb_indexes


_COPY_COLUMNS = {"tenant_id": "bigint", "knowledge_base_id": "bigint", "text": "text", "source_line": "integer",
                 "source_name": "varchar", "digest": "varchar", "vector": "vector", "created_at": "timestamptz"}


def store_documents(documents: list[Document], vectors: np.ndarray) -> None:
    """Insert unsaved documents with their embeddings (row i of ``vectors``),
    in the caller's transaction: on PostgreSQL one binary COPY into the
    ``vector`` column; elsewhere float32 bytes, in bulk INSERTs."""
    if not documents:
        return
    if connection.vendor != "postgresql":
        for document, vector in zip(documents, vectors):
            document.embedding = np.asarray(vector, dtype="<f4").tobytes()
        Document.objects.bulk_create(documents, batch_size=1000)
        return
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo

    with connection.cursor() as cursor:
        raw = cursor.cursor
        register_vector_info(raw, TypeInfo.fetch(raw.connection, "vector"))  # this cursor only
        with raw.copy(f"COPY search_document ({', '.join(_COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_COPY_COLUMNS.values()))
            for document, vector in zip(documents, vectors):
                copy.write_row((document.tenant_id, document.knowledge_base_id, document.text, document.source_line,
                                document.source_name, document.digest, np.asarray(vector, dtype=np.float32),
                                document.created_at))


def configure_connection(sender, connection, **kwargs) -> None:
    """Per PostgreSQL connection: how many candidates an HNSW search reads, and
    pgvector 0.8's iterative scan, so a filtered search keeps looking until it
    has enough rows of its knowledge base (connection_created)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SET hnsw.ef_search = %s" % int(settings.SEARCH_HNSW_EF_SEARCH))
        cursor.execute("SET hnsw.iterative_scan = relaxed_order")
