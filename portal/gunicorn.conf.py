"""Gunicorn settings. The model is opened in each worker after fork, never in
the master (no --preload): a sealed model's plaintext lives only in workers."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from keystore.keys import receive_handed_over_secrets, reexec_without_secrets  # noqa: E402
from portal import metrics_gunicorn, sizing  # noqa: E402
from portal.logs import gunicorn_logconfig  # noqa: E402

# Keys given as environment variables would stay readable in /proc/<pid>/environ
# of the master and of every worker (popping them from os.environ does not
# change a process's initial environment block). So the master re-execs itself
# once without them, handing the values over through an inherited pipe; they
# then live only in memory, and workers forked from the master find them there.
reexec_without_secrets()
receive_handed_over_secrets()

bind = os.environ.get("PORTAL_BIND", "127.0.0.1:8000")
# Workers, threads and torch threads from the cores this process may use
# (portal/sizing.py), unless the environment sets them.
SIZING = sizing.plan()
workers = SIZING.workers
threads = SIZING.threads
worker_class = "gthread"
timeout = 120
preload_app = False
accesslog = os.environ.get("PORTAL_ACCESS_LOG", "-") or None
# No runtime control socket: nothing outside the process should steer it, and
# two portals on one host would otherwise share one socket path.
control_socket_disable = True
# No query strings in the access log: presigned URLs carry signatures there.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
# Production: one JSON object a line on stdout (portal/logs.py); {} keeps the above.
logconfig_dict = gunicorn_logconfig(Path(__file__).resolve().parent.parent)


def on_starting(server):
    metrics_gunicorn.prepare_metrics_dir()  # /metrics: PROMETHEUS_MULTIPROC_DIR, emptied
    server.log.info("sizing: %s", SIZING.describe())
    for warning in SIZING.warnings:
        server.log.warning("sizing: %s", warning)


def child_exit(server, worker):
    metrics_gunicorn.worker_exited(worker.pid)


def on_exit(server):
    metrics_gunicorn.master_exiting()


def post_worker_init(worker):
    import torch

    from portal.readiness import register_check, run_worker_startup

    # Before the model opens: torch would otherwise take every core in every worker.
    torch.set_num_threads(SIZING.torch_threads)
    register_check("sizing", lambda: (True, f"{SIZING.describe()}; this worker runs torch on "
                                            f"{torch.get_num_threads()} thread(s)"))
    run_worker_startup()
