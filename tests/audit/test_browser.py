"""In a real browser against a real gunicorn: the compliance officer logs in,
filters by user and date, exports, and the downloaded bundle verifies with
the standalone tool. Screenshots of the admin list and the dashboard go to
tests/artifacts/audit/.

Needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium);
never downloads a browser.
"""
import datetime as dt
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts" / "audit"
PASSWORD = "browser-test-" + secrets.token_hex(6)

pytestmark = [pytest.mark.slow]


@pytest.fixture(autouse=True)
def _chromium_installed():
    # A missing browser is a failure, not a skip: .ci/run installs it.
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium")

SEED = """
from django.contrib.auth import get_user_model
from audit.ledger.services import record_event
from portal.models import Membership, Tenant
acme = Tenant.objects.create(slug="acme", name="Acme")
globex = Tenant.objects.create(slug="globex", name="Globex")
User = get_user_model()
chris = User.objects.create_user("chris", password="{password}", is_staff=True)
Membership.objects.create(user=chris, tenant=acme, role="compliance")
alice = User.objects.create_user("alice", password="{password}")
Membership.objects.create(user=alice, tenant=acme, role="searcher")
carol = User.objects.create_user("carol", password="{password}")
Membership.objects.create(user=carol, tenant=acme, role="searcher")
bob = User.objects.create_user("bob", password="{password}")
Membership.objects.create(user=bob, tenant=globex, role="searcher")
for i in range(6):
    for user, tenant, words in ((alice, acme, "alice asks about vpn"), (carol, acme, "carol asks about printers"),
                                (bob, globex, "globex-secret merger")):
        record_event(action="search.completed", tenant=tenant, user=user, query=f"{{words}} {{i}}",
                     kb_id=1, kb_name="FAQ", result_count=3, top_score=0.5 + i / 20, latency_ms=4 + i,
                     context={{"client_ip": "10.0.0.%d" % (i + 1), "request_id": "seed%04d" % i}})
record_event(action="search.failed", outcome="failure", tenant=acme, user=alice, query="alice broken")
from search.models import KnowledgeBase
dora = User.objects.create_user("dora", password="{password}")
Membership.objects.create(user=dora, tenant=acme, role="curator")
Membership.objects.create(user=dora, tenant=globex, role="searcher")
KnowledgeBase.objects.create(tenant=acme, name="Handbook")
"""


def launch_chromium(playwright):
    """Debian's Chromium, with nothing that reaches outside the machine."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"])


def csp_violations(page) -> list[str]:
    """Collects the browser's Content-Security-Policy complaints on ``page``."""
    found = []
    page.on("console", lambda message: found.append(message.text)
            if "Content Security Policy" in message.text else None)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def portal_server(tmp_path):
    """A migrated file database with seed data, served by gunicorn on a free loopback port."""
    port = free_port()
    env = dict(os.environ, PORTAL_DOTENV="", DATABASE_URL=f"sqlite:///{tmp_path / 'portal.sqlite3'}",
               EMBED_MODEL_KEY=secrets.token_hex(32), AUDIT_HMAC_KEY=secrets.token_hex(32),
               AUDIT_SIGNING_KEY_FILE=str(tmp_path / "audit-signing.pem"),
               PORTAL_CACHE_DIR=str(tmp_path / "cache"), PORTAL_BIND=f"127.0.0.1:{port}", PORTAL_WORKERS="1",
               EMBED_MODEL_PATH=str(tmp_path / "no-model.q3e.enc"), EMBED_DEVICE="cpu")
    manage = [sys.executable, str(ROOT / "manage.py")]

    def django(*args):
        result = subprocess.run(manage + list(args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    public_key = django("audit_keygen").strip().rsplit(" ", 1)[1]
    django("migrate", "--noinput", "-v", "0")
    django("shell", "-c", SEED.format(password=PASSWORD))
    log = open(tmp_path / "gunicorn.log", "w")
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "-c", "portal/gunicorn.conf.py",
                               "portal.wsgi"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if server.poll() is not None:
                pytest.fail("gunicorn exited:\n" + (tmp_path / "gunicorn.log").read_text()[-4000:])
            try:
                if urllib.request.urlopen(base + "/healthz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("gunicorn did not answer /healthz:\n" + (tmp_path / "gunicorn.log").read_text()[-4000:])
        yield {"base": base, "public_key": public_key, "tmp": tmp_path}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_officer_filters_exports_and_the_bundle_verifies(portal_server):
    from playwright.sync_api import sync_playwright

    base, tmp = portal_server["base"], portal_server["tmp"]
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900}).new_page()
            outside = []
            page.on("request", lambda request: outside.append(request.url)
                    if not request.url.startswith((base, "data:", "blob:")) else None)
            violations = csp_violations(page)
            page.goto(base + "/accounts/login/?next=/admin/audit/auditevent/")
            page.fill("#id_username", "chris")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url("**/admin/audit/auditevent/")
            assert "globex" not in page.content().lower()
            page.screenshot(path=str(ARTIFACTS / "admin-list.png"), full_page=True)

            page.click("#changelist-filter a:text-is('alice')")
            page.wait_for_url("**user=*")
            page.fill("#occurred_from", today)
            page.fill("#occurred_to", today)
            page.click("text=Apply dates")
            page.wait_for_url("**occurred_to=*")
            rows = page.locator("#result_list tbody tr")
            assert rows.count() == 7
            assert "carol asks" not in page.content() and "alice asks about vpn 5" in page.content()
            page.screenshot(path=str(ARTIFACTS / "admin-list-filtered.png"), full_page=True)

            page.check("#action-toggle")
            page.select_option("select[name=action]", "export_signed_bundle")
            with page.expect_download() as download_info:
                page.click("button[name=index]")
            bundle = tmp / "download.zip"
            download_info.value.save_as(bundle)

            page.goto(base + "/audit/dashboard/")
            assert page.locator("svg.chart").count() == 1
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert outside == [], f"requests left the machine: {outside}"
            assert violations == [], violations  # the admin and the dashboard run under the policy
        finally:
            browser.close()
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "verify_audit_export.py"), str(bundle),
                             "--public-key", portal_server["public_key"]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VERIFIED" in result.stdout and "7 events" in result.stdout
    for name in ("admin-list.png", "admin-list-filtered.png", "dashboard.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000


def test_pages_work_under_the_content_security_policy(portal_server):
    """No inline script anywhere: the upload progress, the organisation and
    language switches and the API docs all run from files under the policy."""
    from playwright.sync_api import expect, sync_playwright

    base = portal_server["base"]
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_context().new_page()
            violations = csp_violations(page)
            page.goto(base + "/accounts/login/?next=/kbs/")
            page.fill("#id_username", "dora")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url("**/kbs/")
            page.click("text=Handbook")
            page.set_input_files("#id_file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                     "buffer": b"Where is the VPN guide?\n"}])
            page.click("#upload-form button[type=submit]")
            # The upload is checked and queued (the request needs no model);
            # the script follows the import's state from its own file (fetch,
            # connect-src 'self'). No worker runs here, so it waits.
            expect(page.locator("#upload-message")).to_have_text("Waiting for the import worker…", timeout=30_000)
            assert page.locator("#upload-status").is_visible()

            page.select_option("#tenant-switch", "globex")  # submits by itself (site.js)
            page.wait_for_load_state("load")
            assert page.locator("header.top").inner_text().count("Globex") >= 1
            page.select_option("#language", "zh-hans")
            expect(page.locator("html")).to_have_attribute("lang", "zh-hans")

            page.goto(base + "/api/v1/docs/")
            page.wait_for_selector(".swagger-ui .info .title")
            assert violations == [], violations
        finally:
            browser.close()
