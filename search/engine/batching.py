"""The micro-batcher: concurrent callers in one process share the model's forward passes."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from search.engine.errors import EngineUnavailable

DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH_SIZE = 64


@dataclass
class _Request:
    ids: list[list[int]]
    vectors: np.ndarray
    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def wait(self) -> np.ndarray:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.vectors


class MicroBatcher:
    """One worker thread runs the model; callers queue tokenized texts and wait.

    Texts from every waiting caller are pooled, sorted by length (short first, so
    interactive queries are not stuck behind a bulk import) and cut into batches
    of at most ``max_tokens`` padded tokens and ``max_size`` texts. A caller that
    arrives while a batch runs joins the next one.
    """

    def __init__(self, run_batch: Callable[[list[list[int]]], np.ndarray], dimensions: int, max_tokens: int,
                 max_size: int):
        self._run_batch = run_batch
        self._dimensions = dimensions
        self._max_tokens = max_tokens
        self._max_size = max_size
        self._pending: list[tuple[int, _Request, int]] = []  # (length, request, row)
        self._wakeup = threading.Condition()
        self._worker: threading.Thread | None = None
        self._worker_pid: int | None = None
        self._closed = False

    def submit(self, ids: list[list[int]]) -> np.ndarray:
        """The vectors of ``ids``, once their batch has run."""
        return self.start(ids).wait()

    def start(self, ids: list[list[int]]) -> "_Request":
        """Queue ``ids`` and return at once; ``.wait()`` on the result gives the
        vectors (or raises the batch's error). The caller does other work, such
        as writing an audit record, while the model runs."""
        request = _Request(ids, np.empty((len(ids), self._dimensions), np.float32), len(ids))
        if not ids:
            request.done.set()
            return request
        with self._wakeup:
            if self._closed:
                raise EngineUnavailable("the embedding engine was closed")
            self._ensure_worker()
            self._pending.extend((len(seq), request, row) for row, seq in enumerate(ids))
            self._wakeup.notify()
        return request

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify_all()
        if self._worker is not None and self._worker_pid == os.getpid():
            self._worker.join(timeout=30)

    def _ensure_worker(self) -> None:
        # A forked child inherits the object but not the thread: start its own.
        if self._worker is None or self._worker_pid != os.getpid() or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="embed-batcher", daemon=True)
            self._worker_pid = os.getpid()
            self._worker.start()

    def _next_batch(self) -> list[tuple[int, _Request, int]] | None:
        with self._wakeup:
            while not self._pending and not self._closed:
                self._wakeup.wait()
            if not self._pending:
                return None
            self._pending.sort(key=lambda item: item[0])
            size = 1
            while (
                size < len(self._pending)
                and size < self._max_size
                and (size + 1) * max(self._pending[size][0], 1) <= self._max_tokens
            ):
                size += 1
            batch, self._pending = self._pending[:size], self._pending[size:]
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                vectors = self._run_batch([item[1].ids[item[2]] for item in batch])
            except BaseException as exc:  # handed to every waiting caller, never lost in this thread
                error: BaseException | None = exc
            else:
                error = None
            for index, (_, request, row) in enumerate(batch):
                if error is None:
                    request.vectors[row] = vectors[index]
                elif request.error is None:
                    request.error = error
                request.remaining -= 1
                if request.remaining == 0:
                    request.done.set()
