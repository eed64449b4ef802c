"""Helpers the benchmark scripts share: a free port, a readiness wait, the demo data."""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
DEMO_KB = ROOT / "search" / "demo_data" / "faq-kb.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(log: str | Path | None, lines: int = 25) -> str:
    if log is None or not Path(log).exists():
        return ""
    text = Path(log).read_text(errors="replace")
    return f"\n--- {log} ---\n" + "\n".join(text.strip().splitlines()[-lines:])


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None, *, method: str = "GET",
               body: bytes | None = None, headers: dict | None = None, status: int | None = 200,
               name: str = "server", log: str | Path | None = None,
               error: type[BaseException] = RuntimeError) -> None:
    """Until ``method url`` answers ``status`` (any answer when ``status`` is None).

    Raises ``error`` if ``proc`` exits first or ``timeout`` seconds pass; the
    message names ``name`` and the port, and ends with the tail of ``log``.
    """
    parts = urlsplit(url)
    path = parts.path or "/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise error(f"{name} on port {parts.port} exited with {proc.returncode} before it was ready"
                        f"{_log_tail(log)}")
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
        try:
            conn.request(method, path, body, headers or {})
            response = conn.getresponse()
            response.read()
            if status is None or response.status == status:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise error(f"{name} on port {parts.port} not ready after {timeout:g} s{_log_tail(log)}")


class DemoData(NamedTuple):
    tenant: object
    user: object
    kb: object  # None when made without one
    entries: list  # the demo FAQ's parsed entries
    token: str


def create_demo_data(*, role: str = "curator", kb: bool = True) -> DemoData:
    """The benchmark's demo data in the configured, migrated database.

    Tenant "bench", user "bench" with ``role`` in it, and an API token for
    them (valid one day); with ``kb``, a knowledge base "FAQ" holding the demo
    FAQ (search/demo_data/faq-kb.txt), embedded by the process's engine, which
    must be open (``set_engine`` / ``open_engine``) before this is called.
    """
    from django.contrib.auth import get_user_model

    from portal.models import Membership, Tenant
    from portal.scope import Scope
    from portal.services import token_create
    from search.parsing import parse_entries
    from search.services import documents_import, kb_create

    tenant = Tenant.objects.create(slug="bench", name="Bench")
    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    Membership.objects.create(user=user, tenant=tenant, role=role)
    entries = parse_entries(DEMO_KB.read_bytes(), "txt", max_entries=10**4, max_chars=10**4)
    base = None
    if kb:
        base = kb_create(scope=Scope(tenant=tenant, user=user), name="FAQ")
        documents_import(scope=Scope(tenant=tenant, user=user), kb=base, entries=entries)
    _, token = token_create(user=user, tenant=tenant, days=1)
    return DemoData(tenant, user, base, entries, token)


_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a gunicorn master and its workers)."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [pid] + [p for child in children.split() for p in process_tree(int(child))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used (all their threads); 0 for one that is gone."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS
