"""A real gunicorn on a real SQLite file database, for tests of what the
server's processes hold and how they fail (issue 9: defects 11, 14, 16)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = """
from portal.models import Membership, Tenant
from portal.services import token_create
from django.contrib.auth import get_user_model
acme = Tenant.objects.create(slug="acme", name="Acme")
alice = get_user_model().objects.create_user("alice", password="live-server-password")
Membership.objects.create(user=alice, tenant=acme, role="searcher")
Membership.objects.create(user=alice, tenant=acme, role="curator")
print("TOKEN", token_create(user=alice, tenant=acme, days=1, label="live")[1])
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Live:
    base: str
    token: str
    env: dict
    db: Path
    log: Path
    process: subprocess.Popen
    extra: dict = field(default_factory=dict)

    def request(self, method: str, path: str, body=None, *, token: str | None = "", timeout: float = 60):
        """(status, headers, bytes) of one request; a 4xx/5xx is an answer, not an error."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def events(self, action: str) -> list[dict]:
        with sqlite3.connect(self.db, timeout=30) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM audit_auditevent WHERE action = ? ORDER BY id", (action,)).fetchall()
        return [dict(row) for row in rows]

    def worker_pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    pids.append(int(entry.name))
        return sorted(pids)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition, what: str, timeout: float = 180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn exited ({self.process.returncode}) while waiting for {what}:\n"
                            + self.log_text()[-4000:])
            value = condition()
            if value:
                return value
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}:\n" + self.log_text()[-4000:])


def manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def start_gunicorn(tmp_path: Path, *, model_path: Path, model_key: bytes, workers: int | None = 1,
                   extra_env: dict | None = None):
    """Migrate and seed a file database, then start gunicorn on it with the keys
    as plain environment variables (workers None: as shipped, sized from the
    cores). A generator: yields a Live, stops the server."""
    port = free_port()
    db = tmp_path / "portal.sqlite3"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EMBED_MODEL_KEY", "AUDIT_HMAC", "DJANGO_SECRET", "PORTAL_WORKERS", "PORTAL_THREADS",
                                "EMBED_TORCH_THREADS"))}
    env.update(PORTAL_DOTENV="", PORTAL_MODE="development", DATABASE_URL=f"sqlite:///{db}",
               EMBED_MODEL_KEY=model_key.hex(),
               AUDIT_HMAC_KEY=os.urandom(32).hex(), DJANGO_SECRET_KEY="django-" + os.urandom(24).hex(),
               PORTAL_CACHE_DIR=str(tmp_path / "cache"), PORTAL_BIND=f"127.0.0.1:{port}",
               EMBED_MODEL_PATH=str(model_path),
               EMBED_DEVICE="cpu", PORTAL_ACCESS_LOG="", AUDIT_JSONL_PATH="")
    if workers is not None:
        env.update(PORTAL_WORKERS=str(workers), PORTAL_THREADS="2")
    env.update(extra_env or {})
    manage(env, "migrate", "--noinput", "-v", "0")
    token = next(line.split()[1] for line in manage(env, "shell", "-c", SEED).splitlines()
                 if line.startswith("TOKEN "))
    log = tmp_path / "gunicorn.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "-c", "portal/gunicorn.conf.py",
                                    "portal.wsgi"], env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    live = Live(base=f"http://127.0.0.1:{port}", token=token, env=env, db=db, log=log, process=process)
    try:
        def healthy():
            try:
                return live.request("GET", "/healthz", token=None, timeout=2)[0] == 200
            except OSError:
                return False

        live.wait_for(healthy, "/healthz")
        # Every worker has tried to open the model once it has recorded model.open.
        if workers is None:
            from portal.sizing import plan

            workers = plan(env).workers
        live.wait_for(lambda: len(live.events("model.open")) >= workers, "model.open from every worker")
        yield live
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
