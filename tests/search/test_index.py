"""The index of the database in use (numpy per worker on SQLite, pgvector on
PostgreSQL): exact top-k, and never a stale row or count."""
import numpy as np

from portal.scope import Scope
from search.index import KbIndexCache, PgVectorIndex, best_rows, kb_index
from search.models import KnowledgeBase
from search.parsing import Entry
from search.services import documents_import, kb_create
from tests.search.portal_fixtures import people, served  # noqa: F401


def test_best_rows_is_exact_top_k_best_first():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((500, 16)).astype(np.float32)
    query = rng.standard_normal(16).astype(np.float32)
    order, scores = best_rows(matrix, query, 7)
    expected = np.argsort(-(matrix @ query))[:7]
    assert list(order) == list(expected)
    assert np.allclose(scores, (matrix @ query)[expected])
    assert len(best_rows(matrix, query, 900)[0]) == 500
    assert len(best_rows(matrix[:0], query, 3)[0]) == 0


def test_a_reused_knowledge_base_id_never_serves_the_old_rows(served, people, tenants):
    """Another worker deleted the knowledge base (this worker's cache was not
    told) and a new one got the same id: the new rows are served."""
    cache = type(kb_index())()  # this worker's, told of nothing
    old = kb_create(scope=Scope(tenant=tenants["globex"], user=people["bob"]), name="old")
    documents_import(scope=Scope(tenant=old.tenant, user=people["bob"]), kb=old,
                     entries=[Entry(1, "secret globex merger plan")])
    old.refresh_from_db()
    hits, _ = cache.search(old, served.embed(["merger"]).vectors[0], 5)
    assert hits[0].text == "secret globex merger plan"
    reused_id = old.pk
    KnowledgeBase.objects.filter(pk=reused_id).delete()
    new = KnowledgeBase.objects.create(pk=reused_id, tenant=tenants["acme"], name="new")
    documents_import(scope=Scope(tenant=new.tenant, user=people["carol"]), kb=new,
                     entries=[Entry(1, "canteen opening hours")])
    new.refresh_from_db()
    hits, count = cache.search(new, served.embed(["merger"]).vectors[0], 5)
    assert count == 1 and [h.text for h in hits] == ["canteen opening hours"]


def _cached_kb_ids(cache) -> set[int]:
    keys = cache._counts if isinstance(cache, PgVectorIndex) else cache._entries
    return {key[0] for key in keys}


def test_cache_keeps_only_the_most_recent_knowledge_bases(served, people, tenants):
    cache = type(kb_index())(max_entries=2)
    kbs = []
    for name in ("one", "two", "three"):
        kb = kb_create(scope=Scope(tenant=tenants["acme"], user=people["carol"]), name=name)
        documents_import(scope=Scope(tenant=kb.tenant, user=people["carol"]), kb=kb,
                         entries=[Entry(1, f"entry {name}")])
        kb.refresh_from_db()
        cache.count(kb)
        kbs.append(kb)
    assert _cached_kb_ids(cache) == {kbs[1].pk, kbs[2].pk}
