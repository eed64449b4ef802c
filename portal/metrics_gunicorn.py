"""gunicorn's side of /metrics (called from portal/gunicorn.conf.py): every
worker writes its metrics into files in PROMETHEUS_MULTIPROC_DIR, which must
be set before a worker imports prometheus_client, is emptied when the master
starts (old workers' counts would otherwise be added to the new ones), and
loses a dead worker's live gauges (the model it served)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_created: list[str] = []


def prepare_metrics_dir() -> str:
    """The folder for this master's workers, created or emptied; its path is
    put in PROMETHEUS_MULTIPROC_DIR so that forked workers inherit it."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not path:
        path = tempfile.mkdtemp(prefix="portal-metrics-")
        _created.append(path)
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return str(folder)


def worker_exited(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def master_exiting() -> None:
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
