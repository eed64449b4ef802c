"""Gunicorn settings for the benchmark's baseline server (case c): the same
portal and the same sealed model on the same backend (ONNX Runtime on the
CPU when the bundle holds a graph), but no audit record is written. Used only
by bench/search_latency.py — never in production."""
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
    import torch

    from keystore.keys import get_keyring
    from search import services
    from search.engine.process import open_engine

    torch.set_num_threads(1)
    open_engine(os.environ["EMBED_MODEL_PATH"], get_keyring().model_key, "cpu")
    services.record_event = lambda **kwargs: None  # audit off: the baseline the portal is measured against
