"""Switching language on a page that answered a search keeps the answer: the
language switch re-posts the page's search form, so the question stays in a
POST body (never in a URL) and the page comes back in the new language."""
import pytest

from tests.audit.test_browser import PASSWORD, launch_chromium, portal_server  # noqa: F401

QUESTION = "how do I reset my password"


def test_only_a_page_that_answered_a_form_asks_to_keep_it(client, tenants, make_user):
    client.force_login(make_user("alice", tenants["acme"], "searcher"))
    assert "data-keep-on-language" not in client.get("/").content.decode()
    answered = client.post("/radar/", {"documents": "a\nb", "query": QUESTION, "top_k": 1}).content.decode()
    assert "data-keep-on-language" in answered and 'data-language' in answered


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/", "/radar/"])
def test_switching_language_keeps_the_question_and_answer(portal_server, path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    base = portal_server["base"]
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.goto(base + "/accounts/login/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            page.goto(base + path)
            if path == "/radar/":
                page.fill("#id_documents", "reset a password at the IT portal\nprinters are on floor 2")
            page.fill("#id_query", QUESTION)
            with page.expect_navigation():
                page.click("form[data-keep-on-language] button[type=submit], main form.card button[type=submit]")
            answer = page.inner_text("main")
            with page.expect_navigation():
                page.select_option("#language", "zh-hans")
            page.wait_for_load_state()
            assert page.get_attribute("html", "lang") == "zh-hans"
            assert page.input_value("#id_query") == QUESTION  # the form came back, answered again
            assert page.url == base + path and "reset" not in page.url
            assert page.inner_text("main") != answer  # the answer, now in Chinese
            assert page.query_selector("form[data-keep-on-language]") is not None
        finally:
            browser.close()
