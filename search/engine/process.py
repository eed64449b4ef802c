"""The process's engine: opened once per worker (gunicorn calls ``open_engine`` after fork), fail closed."""
from __future__ import annotations

import logging
import os
import threading

from portal.metrics import MODEL_INFO
from search.engine.embedding import Engine
from search.engine.errors import EngineError, EngineUnavailable

# The name operators filter on; it was the module's name before the engine became a package.
logger = logging.getLogger("search.engine")

_engine: Engine | None = None
_engine_problem = "the embedding model has not been opened in this process"
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    """The engine this process serves with; ``EngineUnavailable`` if none is open."""
    engine = _engine
    if engine is None:
        raise EngineUnavailable(_engine_problem)
    return engine


def set_engine(engine: Engine | None) -> Engine | None:
    """Install ``engine`` (or none) as the process's engine; returns the previous one, not closed."""
    global _engine, _engine_problem
    with _engine_lock:
        previous, _engine = _engine, engine
        if engine is None:
            _engine_problem = "the embedding model has not been opened in this process"
        _served_model_metric(previous, engine)
    return previous


def _served_model_metric(previous: Engine | None, engine: Engine | None) -> None:
    """portal_model_info{model_id, device, backend} is 1 for the model this process serves."""
    if previous is not None and previous is not engine:
        MODEL_INFO.labels(previous.model_id, str(previous.device), previous.backend).set(0)
    if engine is not None:
        MODEL_INFO.labels(engine.model_id, str(engine.device), engine.backend).set(1)


def open_engine(
    path: str | os.PathLike, key: bytes | None, device: str = "auto", backend: str | None = None
) -> Engine:
    """Open the sealed model for this process (gunicorn calls this after fork); fail closed.

    ``backend`` defaults to the ``EMBED_BACKEND`` setting, so every caller
    (the worker, ``kb_import``, ``demo_setup``) runs the backend the operator chose.
    """
    global _engine, _engine_problem
    with _engine_lock:
        previous, _engine = _engine, None
        if previous is not None:
            previous.close()
        try:
            if key is None:
                raise EngineError("no model key: set EMBED_MODEL_KEY or EMBED_MODEL_KEY_FILE")
            if backend is None:
                from django.conf import settings

                backend = getattr(settings, "EMBED_BACKEND", "auto")
            engine = Engine.open(path, key, device, backend)
        except Exception as exc:
            _engine_problem = f"the embedding model could not be opened: {exc}"
            raise
        _engine = engine
        _served_model_metric(previous, engine)
        logger.info(
            "embedding model %s opened from %s on %s with %s (key %s; languages %s; relevance floor %s)",
            engine.model_id, path, engine.device, engine.backend, engine.key_id,
            ",".join(engine.languages) or "not stated",
            "not calibrated" if engine.relevance_floor is None else engine.relevance_floor,
        )
        return engine


def engine_status() -> tuple[bool, str]:
    """(ready, reason) for a readiness check."""
    engine = _engine
    if engine is None:
        return False, _engine_problem
    return True, f"{engine.model_id} on {engine.device} ({engine.backend})"
