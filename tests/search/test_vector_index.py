"""The index of the database in use, through the search service: results that
match exact numpy search, and another tenant's vectors never in a result.

On SQLite this is the numpy index; on PostgreSQL (make test's second pass)
pgvector, both exactly and through the HNSW index (SEARCH_EXACT_MAX_ROWS=0
sends every search through it)."""
import re

import numpy as np
import pytest
from django.db import connection

from portal.scope import Scope
from search.index import best_rows, kb_index
from search.models import Document
from search.parsing import Entry
from search.services import documents_import, kb_create, search_kb
from tests.search.portal_fixtures import faq_kb, faq_queries, people, served  # noqa: F401

# The HNSW path exists on PostgreSQL only (the SQLite index is exact): deselected there.
PATHS = ["exact", pytest.param("hnsw", marks=pytest.mark.postgresql_only)]


@pytest.fixture(params=PATHS)
def path(request, settings):
    if request.param == "hnsw":
        settings.SEARCH_EXACT_MAX_ROWS = 0
    return request.param


def _vectors_of(kb) -> tuple[list[int], np.ndarray]:
    """The knowledge base's stored vectors, read back from the database."""
    rows = list(Document.objects.filter(tenant_id=kb.tenant_id, knowledge_base=kb).order_by("id")
                .values_list("id", "embedding", "vector"))
    ids = [r[0] for r in rows]
    if connection.vendor == "postgresql":
        return ids, np.array([np.asarray(r[2], dtype=np.float32) for r in rows])
    return ids, np.array([np.frombuffer(r[1], dtype="<f4") for r in rows])


def test_results_and_scores_match_exact_search_over_the_stored_vectors(faq_kb, people, served, path):  # noqa: F811
    ids, matrix = _vectors_of(faq_kb)
    scope = Scope(tenant=faq_kb.tenant, user=people["alice"], roles=frozenset({"searcher"}))
    for item in faq_queries():
        result = search_kb(scope=scope, kb=faq_kb, query=item["query"], top_k=5)
        order, scores = best_rows(matrix, served.embed([item["query"]], kind="query").vectors[0], 5)
        assert [h.id for h in result.hits] == [ids[i] for i in order], item["query"]
        assert np.allclose([h.score for h in result.hits], scores, atol=1e-5), item["query"]
        assert result.line_count == len(ids)


def test_another_tenants_near_duplicates_never_appear(faq_kb, people, tenants, served, path):  # noqa: F811
    """Globex holds many lines closer to the query than anything of Acme's;
    Acme's search returns Acme's lines only, and as many as it asked for."""
    query = "How do I reset my password?"
    rival = kb_create(scope=Scope(tenant=tenants["globex"], user=people["bob"]), name="rival")
    twins = [query, query.lower(), query.upper(), "how do i reset my password", "How can I reset my password?"]
    twins += [f"{query} (copy {n})" for n in range(120)]
    documents_import(scope=Scope(tenant=rival.tenant, user=people["bob"]), kb=rival,
                     entries=[Entry(n + 1, text) for n, text in enumerate(twins)])
    kb_index().forget(faq_kb.pk)
    scope = Scope(tenant=faq_kb.tenant, user=people["alice"], roles=frozenset({"searcher"}))
    result = search_kb(scope=scope, kb=faq_kb, query=query, top_k=10)
    assert len(result.hits) == 10
    found = Document.objects.filter(pk__in=[h.id for h in result.hits])
    assert {d.tenant_id for d in found} == {faq_kb.tenant_id}
    assert {d.knowledge_base_id for d in found} == {faq_kb.pk}
    assert not {h.text for h in result.hits} & set(twins)
    # And the rival's own search does find its lines: the twins are really there.
    rival.refresh_from_db()
    theirs = search_kb(scope=Scope(tenant=rival.tenant, user=people["bob"], roles=frozenset({"searcher"})),
                       kb=rival, query=query, top_k=3)
    assert theirs.hits[0].text == query and theirs.hits[0].score > 0.99


@pytest.mark.postgresql_only
def test_postgresql_stores_vectors_not_bytes_and_indexes_them(faq_kb):  # noqa: F811
    stored = Document.objects.filter(knowledge_base=faq_kb)
    assert not stored.filter(vector__isnull=True).exists()
    assert not stored.filter(embedding__isnull=False).exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                       [f"search_document_hnsw_{faq_kb.dimensions}"])
        (definition,) = cursor.fetchone()
    assert "hnsw" in definition and "vector_cosine_ops" in definition


@pytest.mark.postgresql_only
def test_the_hnsw_path_uses_the_index(faq_kb, settings):  # noqa: F811
    from search.index import _HNSW_SQL, index_type, vector_literal

    dims = faq_kb.dimensions
    sql = _HNSW_SQL.format(dims=dims, kind=index_type(dims))
    with connection.cursor() as cursor:
        # 60 rows: the planner would rather read them by the btree and sort;
        # with that ruled out, the index must match the query's expression.
        for plan_kind in ("seqscan", "bitmapscan", "sort"):
            cursor.execute(f"SET LOCAL enable_{plan_kind} = off")
        cursor.execute("EXPLAIN " + sql, {"q": vector_literal(np.ones(dims) / np.sqrt(dims)),
                                          "tenant": faq_kb.tenant_id, "kb": faq_kb.pk, "k": 5,
                                          "candidates": 20})
        plan = re.sub(r"'\[[^]]*\]'", "'[…]'", "\n".join(row[0] for row in cursor.fetchall()))
    assert f"search_document_hnsw_{dims}" in plan, plan
