"""The new-user trial of issue 9, replayed in Debian's Chromium against a real
gunicorn serving the real sealed all-MiniLM-L6-v2 with the demo data:
double-clicked upload, a nonsense query, the Chinese dashboard and admin,
where each role lands, and the 1,280 px and 390 px layouts. Any console
error or uncaught page error fails the test. Screenshots go to
tests/artifacts/trial/.
"""
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.audit.test_browser import CHROMIUM, free_port, launch_chromium

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "trial"
PASSWORD = "trial-" + secrets.token_hex(8)

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, sealed_minilm, model_key):
    """`demo_setup` on a file database, served by gunicorn with the sealed model."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium")
    tmp = tmp_path_factory.mktemp("trial")
    port = free_port()
    env = dict(os.environ, PORTAL_DOTENV="", DATABASE_URL=f"sqlite:///{tmp / 'portal.sqlite3'}",
               EMBED_MODEL_KEY=model_key.hex(), AUDIT_HMAC_KEY=secrets.token_hex(32),
               AUDIT_SIGNING_KEY_FILE=str(tmp / "audit-signing.pem"), PORTAL_CACHE_DIR=str(tmp / "cache"),
               PORTAL_BIND=f"127.0.0.1:{port}", PORTAL_WORKERS="1", PORTAL_THREADS="4",
               EMBED_MODEL_PATH=str(sealed_minilm), EMBED_DEVICE="cpu", DEMO_PASSWORD=PASSWORD,
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    manage = [sys.executable, str(ROOT / "manage.py")]
    for args in (["audit_keygen"], ["migrate", "--noinput", "-v", "0"], ["demo_setup"]):
        done = subprocess.run(manage + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    log = open(tmp / "gunicorn.log", "w")
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "-c", "portal/gunicorn.conf.py",
                               "portal.wsgi"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    # The task worker beside it, as `make run` starts it: uploads are imported there.
    worker = subprocess.Popen(manage + ["db_worker", "--no-reload", "--interval", "0.5"], env=env, cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if server.poll() is not None:
                pytest.fail("gunicorn exited:\n" + (tmp / "gunicorn.log").read_text()[-4000:])
            try:
                if urllib.request.urlopen(base + "/readyz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the portal never became ready:\n" + (tmp / "gunicorn.log").read_text()[-4000:])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        yield {"base": base, "env": env, "tmp": tmp}
    finally:
        for process in (server, worker):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


class Session:
    """A browser context for one user, collecting every console error and page error."""

    def __init__(self, browser, base, *, width=1280, height=900, locale="en-US"):
        self.base = base
        self.context = browser.new_context(viewport={"width": width, "height": height}, locale=locale)
        self.page = self.context.new_page()
        self.errors = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        # The console names no address for a failed load; this does.
        self.page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def login(self, username):
        self.page.goto(self.base + "/accounts/login/")
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("load")
        return self.page.url.removeprefix(self.base)

    def horizontal_overflow(self) -> int:
        """How many pixels the page is wider than the window (0 when nothing overflows)."""
        return self.page.evaluate(
            "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
            " - document.documentElement.clientWidth")

    def close(self):
        self.context.close()


LANDING = {"alice": "/", "bob": "/", "carol": "/kbs/", "chris": "/audit/dashboard/", "adam": "/tokens/"}
PAGES = {
    "alice": ["/", "/radar/", "/tokens/"],
    "carol": ["/", "/kbs/", "/kbs/{kb}/", "/radar/"],
    "chris": ["/audit/dashboard/", "/admin/audit/auditevent/", "/admin/audit/auditevent/{event}/change/"],
    "adam": ["/tokens/", "/kbs/", "/"],
}
NONSENSE = "asdkjh qwpeoiru zmxncb"


def _ids(session) -> dict:
    """The demo knowledge base's id and one audit event's id, read off the pages."""
    page = session.page
    page.goto(session.base + "/kbs/")
    kb = page.locator("a[href^='/kbs/']").filter(has_text="FAQ").first.get_attribute("href").strip("/").split("/")[1]
    return {"kb": kb}


@pytest.mark.parametrize("username", sorted(LANDING))
def test_each_role_lands_where_its_work_is_and_every_link_it_sees_opens(demo_server, browser, username):
    session = Session(browser, demo_server["base"])
    try:
        assert session.login(username) == LANDING[username]
        links = session.page.eval_on_selector_all(
            "header a[href^='/']", "links => links.map(a => a.getAttribute('href'))")
        assert links, "the header offers no link"
        for href in sorted(set(links)):
            response = session.page.request.get(session.base + href)
            assert response.status == 200, f"{username} is offered {href}, which answers {response.status}"
        assert session.errors == [], session.errors
    finally:
        session.close()


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("username", sorted(PAGES))
def test_no_page_is_wider_than_the_window(demo_server, browser, username, width):
    session = Session(browser, demo_server["base"], width=width)
    try:
        session.login(username)
        ids = {"kb": None, "event": None}
        if any("{kb}" in p for p in PAGES[username]):
            ids.update(_ids(session))
        if any("{event}" in p for p in PAGES[username]):
            session.page.goto(session.base + "/admin/audit/auditevent/")
            href = session.page.locator("#result_list tbody tr a").first.get_attribute("href")
            ids["event"] = href.rstrip("/").split("/")[-2]
        for path in PAGES[username]:
            path = path.format(**ids)
            session.page.goto(session.base + path)
            overflow = session.horizontal_overflow()
            name = f"{username}-{width}-{path.strip('/').replace('/', '_') or 'home'}.png"
            session.page.screenshot(path=str(ARTIFACTS / name), full_page=True)
            assert overflow <= 0, f"{path} at {width} px is {overflow} px wider than the window ({name})"
        assert session.errors == [], session.errors
    finally:
        session.close()


def test_a_nonsense_query_says_nothing_matched_well_and_a_real_one_answers(demo_server, browser):
    session = Session(browser, demo_server["base"])
    page = session.page
    try:
        session.login("alice")
        page.fill("#id_query", NONSENSE)
        page.click("form[role=search] button[type=submit]")
        page.wait_for_selector("#nothing-matched-well")
        assert page.locator("ol.results").first.is_hidden()  # the weak hits are folded away
        page.screenshot(path=str(ARTIFACTS / "nonsense.png"), full_page=True)
        page.fill("#id_query", "I forgot my password")
        page.click("form[role=search] button[type=submit]")
        page.wait_for_selector("#results-title")
        assert page.locator("#nothing-matched-well").count() == 0
        assert "password" in page.locator("ol.results li").first.inner_text().lower()
        assert session.errors == [], session.errors
    finally:
        session.close()


def test_a_double_clicked_upload_imports_once_and_stores_each_line_once(demo_server, browser):
    session = Session(browser, demo_server["base"])
    page = session.page
    try:
        session.login("carol")
        kb = _ids(session)["kb"]
        page.goto(f"{session.base}/kbs/{kb}/")
        uploads = []
        page.on("request", lambda r: uploads.append(r.url) if r.method == "POST" and "/upload" in r.url else None)
        lines = ["The trial kiosk is on the second floor.", "Badge printers are reset from the front desk."]
        page.set_input_files("#id_file", files=[{"name": "trial.txt", "mimeType": "text/plain",
                                                 "buffer": "\n".join(lines).encode()}])
        page.dblclick("#upload-form button[type=submit]")
        # The upload answers 202, the page follows the worker's progress, then reloads with the import listed.
        expect(page.locator("#imports tr[data-status=succeeded]").first).to_contain_text(
            "2 entries added, 0 duplicates skipped.", timeout=120_000)
        assert len(uploads) == 1, uploads
        page.goto(f"{session.base}/kbs/{kb}/?page=2")
        body = page.content()
        assert all(body.count(line) == 1 for line in lines), "an uploaded line is missing or stored twice"
        assert session.errors == [], session.errors
    finally:
        session.close()


def test_the_chinese_dashboard_and_admin_render_for_the_officer(demo_server, browser):
    session = Session(browser, demo_server["base"], locale="zh-CN")
    page = session.page
    try:
        assert session.login("chris") == LANDING["chris"]
        for path in ("/audit/dashboard/", "/admin/audit/auditevent/"):
            page.goto(session.base + path)
            assert page.evaluate("document.documentElement.lang") == "zh-hans"
            assert re.search(r"[\u4e00-\u9fff]", page.locator("h1").first.inner_text())
            page.screenshot(path=str(ARTIFACTS / f"zh-{path.strip('/').replace('/', '_')}.png"), full_page=True)
        page.locator("#result_list tbody tr a").first.click()
        page.wait_for_load_state("load")
        assert page.evaluate("document.documentElement.lang") == "zh-hans"
        page.screenshot(path=str(ARTIFACTS / "zh-event-detail.png"), full_page=True)
        assert session.errors == [], session.errors
    finally:
        session.close()
