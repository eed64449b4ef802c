"""The staff pages render entirely in Simplified Chinese when the browser asks for it."""
import re
from html.parser import HTMLParser

import pytest

from tests.search.portal_fixtures import faq_kb, people, served  # noqa: F401

# Words that stay as they are in any language: product names, data, formats.
ALLOWED = {"API", "FAQ", "HMAC", "MB", "csv", "jsonl", "txt", "UTC", "English", "sentence", "transformers",
           "all", "MiniLM", "L6", "v2", "carol", "alice", "Acme", "Globex", "IP"}


class VisibleText(HTMLParser):
    """Text a person reads: text nodes plus placeholder/aria-label/title attributes."""

    def __init__(self):
        super().__init__()
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in ("placeholder", "aria-label", "title", "alt") and value:
                self.parts.append(value)
            if tag == "input" and name == "value" and dict(attrs).get("type") in ("submit", "button"):
                self.parts.append(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def english_words(html: str, data_strings: list[str]) -> set[str]:
    parser = VisibleText()
    parser.feed(html)
    text = " ".join(parser.parts)
    for value in data_strings:  # the knowledge base's own content is not the interface
        text = text.replace(value, " ")
    return {w for w in re.findall(r"[A-Za-z][A-Za-z]+", text) if w not in ALLOWED}


@pytest.mark.parametrize("path,method", [("/", "get"), ("/", "post"), ("/radar/", "get"), ("/kbs/", "get"),
                                         ("/kbs/{kb}/", "get"), ("/tokens/", "get"), ("/accounts/login/", "get")])
def test_page_has_no_untranslated_string_in_chinese(faq_kb, people, client, path, method):
    if path != "/accounts/login/":
        client.force_login(people["carol"])
    url = path.format(kb=faq_kb.pk)
    data = {"kb": faq_kb.pk, "query": "忘记密码", "top_k": 3} if method == "post" else None
    response = getattr(client, method)(url, data, HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9,en;q=0.5")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<html lang="zh-hans">' in html
    assert re.search(r"[\u4e00-\u9fff]", html)
    documents = list(faq_kb.documents.values_list("text", flat=True)) + [faq_kb.model_id, faq_kb.name]
    assert english_words(html, documents) == set()


def test_english_is_the_default_and_language_can_be_switched(faq_kb, people, client):
    client.force_login(people["carol"])
    assert '<html lang="en">' in client.get("/").content.decode()
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert "检索" in client.get("/").content.decode()
    client.post("/i18n/setlang/", {"language": "en", "next": "/"}, HTTP_ACCEPT_LANGUAGE="zh-CN")
    assert '<html lang="en">' in client.get("/", HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()


def test_catalogue_is_complete():
    import polib
    from pathlib import Path

    po = polib.pofile(str(Path(__file__).resolve().parents[2] / "locale/zh_Hans/LC_MESSAGES/django.po"))
    assert po.percent_translated() == 100, [e.msgid for e in po.untranslated_entries()]
    assert not po.fuzzy_entries()


@pytest.fixture
def reviewed(faq_kb, people, tmp_path):
    """chris reviews acme's audit: searches to list, a signed checkpoint for the chain status."""
    from audit.ledger.checkpoints import checkpoint_create
    from audit.ledger.services import record_event
    from keystore.keys import get_keyring
    from keystore.signing import generate_signing_key

    ring = get_keyring()
    saved = ring.signing_key_pem
    generate_signing_key(tmp_path / "audit-signing.pem")
    ring.signing_key_pem = (tmp_path / "audit-signing.pem").read_bytes()

    event = record_event(action="search.completed", tenant=faq_kb.tenant, user=people["alice"], query="忘记密码",
                         kb_id=faq_kb.pk, kb_name=faq_kb.name, kb_lines=10, result_count=3, top_score=0.8123456,
                         latency_ms=4.5, model_id=faq_kb.model_id)
    event.checkpoint = checkpoint_create(chain=event.chain, tenant=event.tenant)
    yield event
    ring.signing_key_pem = saved


# The audit records' own values (actions, outcomes, names, digests) are data, not the interface.
AUDIT_DATA = ["auth.login", "search.completed", "search.failed", "search.submitted", "audit.view", "kb.create", "doc.import",
              "access.denied", "success", "failure", "denied", "session"]


@pytest.mark.parametrize("page", ["/audit/dashboard/", "/admin/audit/auditevent/", "detail"])
def test_audit_pages_have_no_untranslated_string_in_chinese(reviewed, faq_kb, people, client, page):
    client.force_login(people["chris"])
    url = f"/admin/audit/auditevent/{reviewed.pk}/change/" if page == "detail" else page
    response = client.get(url, HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9,en;q=0.5")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<html lang="zh-hans"' in html
    data = [reviewed.mac, reviewed.prev_hash, reviewed.key_id, reviewed.request_id, reviewed.session_digest,
            reviewed.checkpoint.signing_key_id, faq_kb.model_id, faq_kb.name, "chris"] + AUDIT_DATA
    words = english_words(html, [d for d in data if d])
    assert words == set(), sorted(words)


@pytest.mark.parametrize("language,added,skipped,expected", [
    ("en", 1, 2, "1 entry added, 2 duplicates skipped."),
    ("en", 3, 1, "3 entries added, 1 duplicate skipped."),
    ("en", 0, 0, "0 entries added, 0 duplicates skipped."),
    ("zh-hans", 1, 2, "已添加 1 条，跳过重复 2 条。"),
])
def test_a_finished_import_counts_in_the_right_number_and_language(language, added, skipped, expected):
    from django.utils import translation

    from search.models import ImportJob
    from search.views import _job_state

    job = ImportJob(pk=7, knowledge_base_id=3, status=ImportJob.Status.SUCCEEDED, added=added,
                    skipped_duplicates=skipped, total=added + skipped, done=added + skipped)
    with translation.override(language):
        assert _job_state(job)["message"] == expected
