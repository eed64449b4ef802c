"""Exact cosine top-k over a per-process matrix for each knowledge base.

Embeddings are L2-normalised, so cosine is a dot product. The matrix of a
knowledge base is loaded on first use and reloaded when its `version` moves
(every import or delete bumps it), so a worker never serves stale results.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from search.models import Document


@dataclass(frozen=True)
class Hit:
    id: int
    text: str
    score: float
    source_line: int | None


@dataclass
class KbMatrix:
    version: int
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
    def __init__(self):
        self._entries: dict[int, KbMatrix] = {}
        self._lock = threading.Lock()

    def get(self, kb) -> KbMatrix:
        entry = self._entries.get(kb.pk)
        if entry is not None and entry.version == kb.version:
            return entry
        with self._lock:
            entry = self._entries.get(kb.pk)
            if entry is None or entry.version != kb.version:
                entry = self._load(kb)
                self._entries[kb.pk] = entry
        return entry

    def forget(self, kb_id: int) -> None:
        self._entries.pop(kb_id, None)

    @staticmethod
    def _load(kb) -> KbMatrix:
        rows = list(Document.objects.filter(knowledge_base=kb).order_by("id")
                    .values_list("id", "text", "source_line", "embedding"))
        dims = kb.dimensions or 0
        matrix = np.empty((len(rows), dims), dtype=np.float32)
        for i, row in enumerate(rows):
            matrix[i] = np.frombuffer(row[3], dtype="<f4")
        return KbMatrix(
            version=kb.version,
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
