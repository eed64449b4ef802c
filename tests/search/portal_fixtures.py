"""Fixtures for portal-level search tests: the sealed MiniLM served as the
process engine, the demo FAQ as a knowledge base, users by role."""
import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "search" / "demo_data"
QUERIES = Path(__file__).resolve().parents[3] / "shared" / "data" / "faq-queries.jsonl"


def faq_queries() -> list[dict]:
    source = QUERIES if QUERIES.exists() else DATA / "faq-queries.jsonl"
    return [json.loads(line) for line in source.read_text().splitlines() if line.strip()]


@pytest.fixture
def served(minilm_engine):
    from search.engine import set_engine

    previous = set_engine(minilm_engine)
    yield minilm_engine
    set_engine(previous)


@pytest.fixture
def people(tenants, make_user):
    acme, globex = tenants["acme"], tenants["globex"]
    return {
        "alice": make_user("alice", acme, "searcher"),
        "carol": make_user("carol", acme, "curator"),
        "chris": make_user("chris", acme, "compliance"),
        "bob": make_user("bob", globex, "searcher", "curator"),
    }


@pytest.fixture
def faq_kb(served, tenants, people):
    from search.parsing import parse_entries
    from portal.scope import Scope
    from search.services import documents_import, kb_create

    kb = kb_create(scope=Scope(tenant=tenants["acme"], user=people["carol"]), name="FAQ")
    entries = parse_entries((DATA / "faq-kb.txt").read_bytes(), "txt", max_entries=1000, max_chars=10000)
    documents_import(scope=Scope(tenant=kb.tenant, user=people["carol"]), kb=kb, entries=entries)
    kb.refresh_from_db()
    return kb


@pytest.fixture
def token_for(make_token, bearer, tenants):
    def make(user, tenant="acme"):
        _, text = make_token(user, tenants[tenant])
        return bearer(text)

    return make
