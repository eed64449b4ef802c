"""Upgrading a PostgreSQL database: search migration 0003 moves every stored
embedding into pgvector without losing a digit, and back."""
import numpy as np
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = ("search", "0002_kb_min_score_document_source_name")
AFTER = ("search", "0003_document_vector")


def _migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])
    return MigrationExecutor(connection).loader.project_state([target]).apps


@pytest.mark.postgresql_only
@pytest.mark.django_db(transaction=True)
def test_stored_embeddings_move_into_vectors_and_back():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2500, 8)).astype(np.float32)  # more than one batch of the migration
    try:
        old = _migrate(BEFORE)
        tenant = old.get_model("portal", "Tenant").objects.create(slug="upgrade", name="Upgrade")
        kb = old.get_model("search", "KnowledgeBase").objects.create(tenant=tenant, name="kb", model_id="m",
                                                                     dimensions=8)
        Document = old.get_model("search", "Document")
        Document.objects.bulk_create([Document(tenant=tenant, knowledge_base=kb, text=f"t{i}", digest=f"{i:064d}",
                                               embedding=v.astype("<f4").tobytes()) for i, v in enumerate(vectors)])

        new = _migrate(AFTER)
        rows = list(new.get_model("search", "Document").objects.filter(knowledge_base_id=kb.pk).order_by("id")
                    .values_list("embedding", "vector"))
        assert all(embedding is None for embedding, _ in rows)
        assert np.array_equal(np.array([np.asarray(v, dtype=np.float32) for _, v in rows]), vectors)

        back = _migrate(BEFORE)
        rows = list(back.get_model("search", "Document").objects.filter(knowledge_base_id=kb.pk).order_by("id")
                    .values_list("embedding", flat=True))
        assert np.array_equal(np.array([np.frombuffer(bytes(b), dtype="<f4") for b in rows]), vectors)
    finally:
        _migrate(("search", MigrationExecutor(connection).loader.graph.leaf_nodes("search")[0][1]))
