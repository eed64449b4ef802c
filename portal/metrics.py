"""The portal's Prometheus metrics. Django-free, so the embedding engine and
gunicorn's hooks can import it. Labels are route names, methods, status
codes, outcomes and the served model's id: never a path with its values, a
query, a tenant or a key. Under gunicorn every worker writes its own files in
PROMETHEUS_MULTIPROC_DIR (portal/gunicorn.conf.py); /metrics adds them up.
"""
from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUEST_SECONDS = Histogram(
    "portal_http_request_duration_seconds", "Time to answer a request, per route name",
    ["route", "method"])
HTTP_RESPONSES = Counter(
    "portal_http_responses", "Responses per route name and status code", ["route", "method", "status"])
MODEL_FORWARD_SECONDS = Histogram(
    "portal_model_forward_seconds", "Time of one forward pass of the embedding model (a batch)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
SEARCHES = Counter(
    "portal_searches", "Searches per kind (kb, radar) and outcome "
    "(completed, failed, rejected, refused_audit, unavailable, model_mismatch)", ["kind", "outcome"])
MODEL_INFO = Gauge(
    "portal_model_info", "The embedding model a worker serves (1) by model id, device and backend (torch, onnx)",
    ["model_id", "device", "backend"], multiprocess_mode="livemax")
