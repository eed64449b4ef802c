"""The schema stays ready to distribute by tenant (docs/scaling.md, Citus).

Every table is classified — distributed by a tenant column, replicated as a
reference table, or kept on the coordinator — so a new table cannot arrive
unclassified; every tenant-owned table carries ``tenant_id``; and the hot
paths (a search, the audit append it makes, the audit list) filter every
distributed table they read on its distribution column, so each of them is
routed to one shard. The classification below is the one docs/scaling.md
explains; change both together.
"""
import re

import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.search.portal_fixtures import faq_kb, people, served, token_for  # noqa: F401

# table → its distribution column. The audit tables are distributed by
# ``chain`` (the tenant's id, 0 for the platform): Citus does not accept NULL
# in a distribution column, and the platform chain has no tenant.
DISTRIBUTED = {
    "portal_membership": "tenant_id",
    "portal_apitoken": "tenant_id",
    "search_knowledgebase": "tenant_id",
    "search_document": "tenant_id",
    "search_importjob": "tenant_id",
    "audit_exportjob": "tenant_id",
    "audit_auditevent": "chain",
    "audit_auditcheckpoint": "chain",
    "audit_archiveauthorisation": "chain",
}
# Small, read everywhere, joined to distributed tables: a copy on every node.
REFERENCE = {
    "portal_tenant", "auth_user", "auth_group", "auth_permission", "auth_group_permissions",
    "auth_user_groups", "auth_user_user_permissions", "django_content_type",
}
# Only the coordinator reads them; never joined to a distributed table in a query.
COORDINATOR = {
    "django_migrations", "django_session", "django_admin_log", "django_tasks_database_dbtaskresult",
    "axes_accessattempt", "axes_accessfailurelog", "axes_accessattemptexpiration", "axes_accesslog",
}
# Queries on a distributed table that do not name its distribution column, with
# the reason and what docs/scaling.md says changes for them.
FAN_OUT = {
    ("portal_apitoken", "digest"): "a bearer token names no tenant until it is found: a token lookup reads every "
                                   "shard (docs/scaling.md: tokens would carry their tenant id in the prefix)",
}


def _tenant_model():
    return apps.get_model(settings.AUDIT_TENANT_MODEL)


@pytest.mark.django_db
def test_every_table_is_classified_once():
    tables = set(connection.introspection.table_names())
    classes = [set(DISTRIBUTED), REFERENCE, COORDINATOR]
    assert not (classes[0] & classes[1] or classes[0] & classes[2] or classes[1] & classes[2])
    unclassified = tables - set().union(*classes)
    assert not unclassified, f"classify these tables in tests/test_distribution.py and docs/scaling.md: {sorted(unclassified)}"


def test_every_tenant_owned_table_carries_tenant_id_and_is_distributed():
    tenant_model = _tenant_model()
    for model in apps.get_models(include_auto_created=True):
        table = model._meta.db_table
        columns = {field.column for field in model._meta.local_fields}
        owned = any(getattr(field, "related_model", None) is tenant_model and field.many_to_one
                    for field in model._meta.local_fields)
        if owned:
            assert "tenant_id" in columns, table
            assert table in DISTRIBUTED, f"{table} belongs to a tenant: distribute it"
        if table in DISTRIBUTED:
            assert DISTRIBUTED[table] in columns, f"{table} has no column {DISTRIBUTED[table]}"
            assert owned or table == "audit_archiveauthorisation", f"{table} is distributed but names no tenant"


def _unrouted(queries: list[dict]) -> list[str]:
    """SQL statements that read or change a distributed table without naming
    its distribution column in their WHERE clause (an INSERT names it among
    its values)."""
    found = []
    for query in queries:
        sql = query["sql"]
        for table, column in DISTRIBUTED.items():
            if not re.search(rf'\b"?{table}"?\b', sql):
                continue
            if sql.lstrip().upper().startswith("INSERT"):
                if not re.search(rf'\(([^)]*\b"?{column}"?\b[^)]*)\)\s*VALUES', sql, re.S):
                    found.append(sql)
                continue
            where = re.split(r"\sWHERE\s", sql.upper(), maxsplit=1)
            if len(where) < 2 or not re.search(rf'\b"?{column.upper()}"?\s*(=|IN\b)', where[1]):
                if not any(t == table and re.search(rf'\b"?{c.upper()}"?\s*=', where[-1])
                           for t, c in FAN_OUT):
                    found.append(sql)
    return found


@pytest.mark.django_db(transaction=True)
def test_a_search_and_its_audit_append_stay_on_one_shard(faq_kb, people, token_for):  # noqa: F811
    api = token_for(people["alice"])
    api.post("/api/v1/search", {"kb": faq_kb.pk, "query": "warm-up", "top_k": 1}, format="json")  # caches settle
    with CaptureQueriesContext(connection) as captured:
        response = api.post("/api/v1/search", {"kb": faq_kb.pk, "query": "reset my password", "top_k": 3},
                            format="json")
    assert response.status_code == 200
    assert any("search_knowledgebase" in q["sql"] for q in captured.captured_queries)
    assert not _unrouted(captured.captured_queries), _unrouted(captured.captured_queries)
    # The ledger appends on the driver's own cursor (audit.ledger.services), out
    # of Django's query log: its two statements, as it runs them here.
    from audit.ledger.services import _statements

    last_row, insert = _statements(connection.vendor)
    assert not _unrouted([{"sql": last_row.replace("?", "%s")}, {"sql": insert}])


@pytest.mark.django_db(transaction=True)
def test_a_knowledge_base_is_read_from_its_tenants_rows_only(faq_kb, people, token_for):  # noqa: F811
    """Loading (numpy) or searching (pgvector) a knowledge base not yet cached."""
    import numpy as np

    from search.index import kb_index

    index = kb_index()
    index.forget(faq_kb.pk)
    query = np.ones(faq_kb.dimensions, dtype=np.float32) / np.sqrt(faq_kb.dimensions)
    with CaptureQueriesContext(connection) as captured:
        hits, count = index.search(faq_kb, query, 3)
    assert len(hits) == 3 and count > 3
    documents = [q for q in captured.captured_queries if "search_document" in q["sql"]]
    assert documents and not _unrouted(documents), documents


@pytest.mark.django_db(transaction=True)
def test_the_audit_list_stays_on_one_shard(faq_kb, people, token_for):  # noqa: F811
    api = token_for(people["chris"])
    with CaptureQueriesContext(connection) as captured:
        response = api.get("/api/v1/audit/events", {"action": "kb.create"})
    assert response.status_code == 200 and response.json()["results"]
    assert any("audit_auditevent" in q["sql"] for q in captured.captured_queries)
    # Every statement of the request, the token's last-use stamp included.
    assert any(q["sql"].startswith('UPDATE "portal_apitoken"') for q in captured.captured_queries)
    assert not _unrouted(captured.captured_queries), _unrouted(captured.captured_queries)


def test_the_check_catches_a_query_that_names_no_distribution_column():
    unrouted = _unrouted([{"sql": 'SELECT "search_document"."id" FROM "search_document" '
                                  'WHERE "search_document"."knowledge_base_id" = 3'},
                          {"sql": 'SELECT "search_document"."id" FROM "search_document" '
                                  'WHERE ("search_document"."tenant_id" = 1 AND "search_document"."knowledge_base_id" = 3)'}])
    assert len(unrouted) == 1 and "tenant_id" not in unrouted[0]
