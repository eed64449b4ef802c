"""What a running gunicorn's processes show, and how a bad model bundle fails,
on a real gunicorn, a real SQLite file database and the real sealed MiniLM
(issue 9: defects 11 and 16)."""
import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from keystore.keys import SECRET_VARIABLES
from tests.portal.live_gunicorn import ROOT, start_gunicorn
from tests.search.conftest import minilm_dir, model_key, sealed_minilm  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow]
RADAR = {"documents": ["reset your password at the self-service page", "the printer is on floor two"],
         "query": "how do I reset my password", "top_k": 1}


def secrets_of(env: dict) -> dict[str, str]:
    return {name: env[name] for name in SECRET_VARIABLES if name in env}


def process_view(pid: int) -> tuple[bytes, bytes]:
    """(/proc/<pid>/environ, /proc/<pid>/cmdline) as the kernel shows them to anyone with access."""
    return Path(f"/proc/{pid}/environ").read_bytes(), Path(f"/proc/{pid}/cmdline").read_bytes()


def assert_no_secret_shown(pid: int, secrets: dict[str, str]) -> None:
    environ, cmdline = process_view(pid)
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert not names & set(SECRET_VARIABLES), f"process {pid} environ names {names & set(SECRET_VARIABLES)}"
    for name, value in secrets.items():
        forms = {value.encode()}
        if name != "DJANGO_SECRET_KEY":
            forms.add(base64.b64encode(bytes.fromhex(value)))
        for form in forms:
            assert form not in environ, f"the value of {name} is in /proc/{pid}/environ"
            assert form not in cmdline, f"the value of {name} is in /proc/{pid}/cmdline"


@pytest.fixture
def keyed_server(tmp_path, sealed_minilm, model_key):
    yield from start_gunicorn(tmp_path, model_path=sealed_minilm, model_key=model_key, workers=2)


def test_keys_given_as_variables_are_not_in_any_server_process_environ(keyed_server):
    live = keyed_server
    secrets = secrets_of(live.env)
    assert set(secrets) == {"EMBED_MODEL_KEY", "AUDIT_HMAC_KEY", "DJANGO_SECRET_KEY"}
    workers = live.wait_for(lambda: len(live.worker_pids()) == 2 and live.worker_pids(), "two workers")
    for pid in [live.process.pid, *workers]:
        assert_no_secret_shown(pid, secrets)
    # The keys still arrived: every worker opened the sealed model and signed its audit events.
    assert [e["outcome"] for e in live.events("model.open")] == ["success", "success"]
    status, _, body = live.request("GET", "/readyz", token=None)
    assert status == 200, body
    status, _, body = live.request("POST", "/api/v1/radar", RADAR)
    assert status == 200, body
    assert b"self-service" in body
    # A worker started later (after a crash) gets the keys from the master's memory, not its environ.
    os.kill(workers[0], signal.SIGKILL)
    replacement = live.wait_for(lambda: [p for p in live.worker_pids() if p not in workers], "a new worker")
    live.wait_for(lambda: len(live.events("model.open")) == 3, "the new worker's model.open")
    assert live.events("model.open")[-1]["outcome"] == "success"
    for pid in replacement:
        assert_no_secret_shown(pid, secrets)
    # The audit chain verifies with the audit key the workers received (real MACs, not a stand-in key).
    verify = subprocess.run([sys.executable, str(ROOT / "manage.py"), "audit_verify"], env=live.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    log = live.log_text()
    for value in secrets.values():
        assert value not in log


@pytest.fixture
def tampered_server(tmp_path, sealed_minilm, model_key):
    copy = tmp_path / "tampered.q3e.enc"
    data = bytearray(sealed_minilm.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of a sealed chunk
    copy.write_bytes(bytes(data))
    yield from start_gunicorn(tmp_path, model_path=copy, model_key=model_key, workers=1)


def test_a_tampered_bundle_fails_closed_and_audited_with_the_server_up(tampered_server):
    live = tampered_server
    [event] = live.events("model.open")
    assert event["outcome"] == "failure" and event["resource_id"] == "tampered.q3e.enc"
    assert '"reason": "ChunkAuthenticationError"' in event["detail"] or \
        '"reason":"ChunkAuthenticationError"' in event["detail"]
    assert live.env["EMBED_MODEL_KEY"] not in event["detail"]
    assert live.process.poll() is None, "the server stopped"
    assert live.worker_pids(), "no worker is serving"
    status, _, _ = live.request("GET", "/readyz", token=None)
    assert status == 503
    for path, body in (("/api/v1/radar", RADAR), ("/v1/embeddings", {"input": "reset my password"})):
        status, headers, answer = live.request("POST", path, body)
        assert status == 503, (path, answer)
        assert headers["Content-Type"].startswith("application/problem+json")
        assert b"self-service" not in answer and b'"embedding"' not in answer
    assert live.process.poll() is None and live.env["EMBED_MODEL_KEY"] not in live.log_text()
