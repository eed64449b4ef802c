"""Layout and focus: no page scrolls sideways at 1280 or 390 px for any role,
the header is one row at 1280 px, the dashboard's last chart label is inside
the chart, and the focus ring contrasts at least 3:1 with the page."""
import re
from pathlib import Path

import pytest

from tests.audit.test_browser import PASSWORD, launch_chromium, portal_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted([_luminance(a), _luminance(b)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_focus_ring_contrasts_3_to_1_with_every_page_background():
    css = (ROOT / "templates" / "base.html").read_text()
    ring = re.search(r":focus-visible\s*\{\s*outline:\s*\d+px solid (#[0-9a-fA-F]{6})", css).group(1)
    page_bg = re.search(r"--bg:(#[0-9a-fA-F]{6})", css).group(1)
    message_bg = re.search(r"\.messages li \{[^}]*background:(#[0-9a-fA-F]{6})", css).group(1)
    for background in ("#ffffff", page_bg, message_bg):
        assert contrast(ring, background) >= 3.0, (ring, background, round(contrast(ring, background), 2))


PAGES = {
    "alice": ["/", "/radar/", "/kbs/", "/tokens/"],
    "dora": ["/", "/radar/", "/kbs/", "/tokens/"],  # a curator in two organisations: the widest header
    "chris": ["/audit/dashboard/", "/tokens/", "/admin/audit/auditevent/"],
}


@pytest.mark.slow
def test_no_page_scrolls_sideways_and_the_header_is_one_row(portal_server):  # noqa: F811
    from playwright.sync_api import sync_playwright

    base = portal_server["base"]
    problems = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            for user, paths in PAGES.items():
                for width in (1280, 390):
                    page = browser.new_page(viewport={"width": width, "height": 900})
                    page.goto(base + "/accounts/login/")
                    page.fill("#id_username", user)
                    page.fill("#id_password", PASSWORD)
                    page.click("button[type=submit]")
                    page.wait_for_load_state()
                    for path in paths:
                        page.goto(base + path)
                        if path == "/tokens/" and not page.query_selector("td code"):
                            page.fill("#id_label", "nightly export of the help-desk statistics")
                            page.click("form:has(#id_label) button[type=submit]")
                            page.wait_for_load_state()
                        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                        if overflow > 0:
                            problems.append(f"{user} {path} @{width}: {overflow}px sideways")
                        if width == 1280 and not path.startswith("/admin/"):
                            rows = page.evaluate("""() => {
                                const tops = new Set();
                                document.querySelectorAll('header.top .wrap > *').forEach(e => {
                                    const r = e.getBoundingClientRect();
                                    if (r.width && r.height) tops.add(Math.round(r.top + r.height / 2) >> 3);
                                });
                                return tops.size; }""")
                            if rows != 1:
                                problems.append(f"{user} {path} @1280: header in {rows} rows")
                        if path == "/audit/dashboard/":
                            clipped = page.evaluate("""() => {
                                const svg = document.querySelector('svg.chart').getBoundingClientRect();
                                return [...document.querySelectorAll('svg.chart text')].filter(t => {
                                    const r = t.getBoundingClientRect();
                                    return r.right > svg.right + 0.5 || r.left < svg.left - 0.5; }).length; }""")
                            if clipped:
                                problems.append(f"{user} {path} @{width}: {clipped} chart labels clipped")
                    page.close()
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
