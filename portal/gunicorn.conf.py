"""Gunicorn settings. The model is opened in each worker after fork, never in
the master (no --preload): a sealed model's plaintext lives only in workers."""
import os

bind = os.environ.get("PORTAL_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PORTAL_WORKERS", "2"))
threads = int(os.environ.get("PORTAL_THREADS", "4"))
worker_class = "gthread"
timeout = 120
preload_app = False
accesslog = os.environ.get("PORTAL_ACCESS_LOG", "-") or None
# No runtime control socket: nothing outside the process should steer it, and
# two portals on one host would otherwise share one socket path.
control_socket_disable = True
# No query strings in the access log: presigned URLs carry signatures there.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


def post_worker_init(worker):
    from portal.readiness import run_worker_startup

    run_worker_startup()
