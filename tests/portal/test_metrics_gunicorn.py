"""/metrics and the logs under a real gunicorn in production mode: two
workers' counts added up (PROMETHEUS_MULTIPROC_DIR), one JSON object a line
on stdout from the master and the workers, no query string in any line."""
import http.client
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.portal.live_gunicorn import start_gunicorn
from tests.search.conftest import minilm_dir, model_key, sealed_minilm  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow]

PRODUCTION = {
    "PORTAL_MODE": "production", "DJANGO_ALLOWED_HOSTS": "127.0.0.1", "DJANGO_HSTS_SECONDS": "31536000",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://127.0.0.1", "TRUSTED_PROXIES": "10.20.0.5/32",
    "DJANGO_SECURE_COOKIES": "true", "PORTAL_ACCESS_LOG": "-", "LOG_FORMAT": "",
}


@pytest.fixture
def production_server(tmp_path, sealed_minilm, model_key):
    env = dict(PRODUCTION, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    yield from start_gunicorn(tmp_path, model_path=sealed_minilm, model_key=model_key, workers=2, extra_env=env)


def healthz_count(live) -> float:
    status, headers, body = live.request("GET", "/metrics", token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "portal_http_responses_total" and sample.labels["route"] == "healthz":
                total += sample.value
    return total


def test_two_workers_metrics_add_up_and_logs_are_json_lines(production_server, tmp_path):
    live = production_server
    assert list((tmp_path / "metrics").glob("*.db")), "workers write their metrics into PROMETHEUS_MULTIPROC_DIR"
    before = healthz_count(live)
    for _ in range(12):
        assert live.request("GET", "/healthz?signature=s3cr3tsig", token=None)[0] == 200
    assert healthz_count(live) == before + 12
    status, _, body = live.request("GET", "/metrics", token=None)
    models = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples
              if s.name == "portal_model_info" and s.value == 1]
    assert len(models) == 1 and models[0].labels["model_id"].endswith("all-MiniLM-L6-v2")
    assert models[0].labels["backend"] == "torch"  # sealed_minilm carries no ONNX graph
    # Plain HTTP to anything but the probes is sent to HTTPS in production.
    connection = http.client.HTTPConnection(live.base.removeprefix("http://"), timeout=30)
    connection.request("GET", "/accounts/login/")
    response = connection.getresponse()
    assert response.status == 301 and response.getheader("Location") == live.base.replace("http", "https", 1) \
        + "/accounts/login/"
    connection.close()

    lines = [line for line in live.log_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        if line.startswith("{"):
            records.append(json.loads(line))
    loggers = {r["logger"] for r in records}
    assert "gunicorn.error" in loggers and "gunicorn.access" in loggers, lines[:20]
    access = [r for r in records if r["logger"] == "gunicorn.access" and r.get("path") == "/healthz"]
    assert len(access) >= 12 and {r["status"] for r in access} == {"200"}
    assert "s3cr3tsig" not in live.log_text()
    # Whatever is not a JSON object is a third-party warning on stderr, never a log record of ours.
    stray = [line for line in lines if not line.startswith("{")]
    assert not [line for line in stray if "gunicorn" in line or "portal" in line or "INFO" in line], stray
