"""A field in error says so to assistive technology: aria-invalid="true" and
aria-describedby pointing at the element that holds the message (login, token
create, knowledge-base create)."""
import re
from html.parser import HTMLParser

import pytest


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.by_name, self.by_id, self._open = {}, {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("input", "select", "textarea") and attrs.get("name"):
            self.by_name[attrs["name"]] = attrs
        if attrs.get("id"):
            self.by_id[attrs["id"]] = {"tag": tag, "text": ""}
            self._open.append((tag, attrs["id"]))

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data):
        for _, element_id in self._open:
            self.by_id[element_id]["text"] += data


def assert_described_error(html: str, field: str, message: str):
    page = Elements()
    page.feed(html)
    attrs = page.by_name[field]
    assert attrs.get("aria-invalid") == "true", (field, attrs)
    ids = attrs.get("aria-describedby", "").split()
    assert ids and all(i in page.by_id for i in ids), (field, ids)
    assert any(message in page.by_id[i]["text"] for i in ids), (field, [page.by_id[i] for i in ids])


def assert_not_flagged(html: str, field: str):
    page = Elements()
    page.feed(html)
    assert "aria-invalid" not in page.by_name[field], field


def test_login_error_is_described(client, tenants, make_user):
    make_user("alice", tenants["acme"], "searcher")
    response = client.post("/accounts/login/", {"username": "alice", "password": "wrong-password"})
    html = response.content.decode()
    for field in ("username", "password"):
        assert_described_error(html, field, "correct username and password")
    assert_not_flagged(client.get("/accounts/login/").content.decode(), "username")


def test_token_form_error_is_described(client, tenants, make_user):
    client.force_login(make_user("alice", tenants["acme"], "searcher"))
    nonce = re.search(r'name="nonce" value="([^"]+)"', client.get("/tokens/").content.decode()).group(1)
    response = client.post("/tokens/", {"nonce": nonce, "label": "x", "days": "0"})
    assert response.status_code == 400
    html = response.content.decode()
    assert_described_error(html, "days", "greater than or equal to 1")
    assert_not_flagged(html, "label")


def test_kb_create_error_is_described(client, tenants, make_user):
    client.force_login(make_user("carol", tenants["acme"], "curator"))
    response = client.post("/kbs/", {"name": "x" * 201, "description": ""})
    assert response.status_code == 400
    html = response.content.decode()
    assert_described_error(html, "name", "at most 200 characters")
    assert_not_flagged(html, "description")
