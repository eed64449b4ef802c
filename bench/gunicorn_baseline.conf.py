"""Gunicorn settings for the benchmark's baseline server (case c): the same
portal, but the model is opened from the plaintext folder and audit records
are not written. Used only by bench/search_latency.py — never in production."""
import os

bind = os.environ["PORTAL_BIND"]
workers = 1
threads = 1
worker_class = "gthread"
timeout = 120
preload_app = False
accesslog = None
control_socket_disable = True


def post_worker_init(worker):
    from search import services
    from search.engine import Engine, set_engine

    set_engine(Engine.open_folder(os.environ["BENCH_PLAINTEXT_MODEL"], model_id=os.environ["BENCH_MODEL_ID"],
                                  device="cpu"))
    services.record_event = lambda **kwargs: None  # audit off: the baseline the portal is measured against
