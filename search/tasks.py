"""Background tasks, run by ``manage.py db_worker`` (django-tasks' database
backend: the queue is a table, no extra server).

The worker opens the sealed model itself, once, with at most
TASK_WORKER_TORCH_THREADS torch threads (1 by default), so an import leaves
the other cores to the gunicorn workers' searches."""
import threading

from django.conf import settings
from django_tasks import task

_engine_lock = threading.Lock()


def _worker_engine() -> None:
    """Open the configured model in this process if it is not open (fail closed, audited)."""
    from search.engine import EngineUnavailable, get_engine
    from search.startup import open_configured_engine

    with _engine_lock:
        try:
            get_engine()
            return
        except EngineUnavailable:
            pass
        import torch

        torch.set_num_threads(max(1, settings.TASK_WORKER_TORCH_THREADS))
        open_configured_engine()


@task()
def run_import(job_id: int) -> None:
    """Import the file of one queued ImportJob (search.services.import_job_run)."""
    from search.services import import_job_run

    _worker_engine()
    import_job_run(job_id)
