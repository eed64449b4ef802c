"""Exact cosine top-k over a per-process matrix for each knowledge base.

Embeddings are L2-normalised, so cosine is a dot product. The matrix of a
knowledge base is loaded on first use and cached under its `revision`, a
random token replaced by every import or delete: a worker never serves stale
rows, not even when a deleted knowledge base's id is reused. Only the most
recently used knowledge bases stay cached.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

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
