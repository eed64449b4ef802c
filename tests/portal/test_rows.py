"""portal.rows: the plain-SQL single-row reads of the API's hot path return
exactly what the ORM returns, and nothing of another tenant."""
import datetime as dt

from django.contrib.auth import get_user_model

from portal.models import ApiToken, Membership, Tenant
from portal.rows import column_values, row_get, row_get_related
from portal.scope import Scope, scoped_row
from search.models import KnowledgeBase


def same_fields(ours, orms):
    for field in type(orms)._meta.concrete_fields:
        assert getattr(ours, field.attname) == getattr(orms, field.attname), field.attname
    return True


def test_row_get_matches_the_orm(tenants, make_user, make_token):
    user = make_user("dora", tenants["acme"], "searcher")
    row, _ = make_token(user, tenants["acme"])
    ApiToken.objects.filter(pk=row.pk).update(revoked_at=dt.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=dt.timezone.utc))
    token = row_get(ApiToken, digest=row.digest)
    orm = ApiToken.objects.get(pk=row.pk)
    assert same_fields(token, orm)
    assert token.expires_at.tzinfo is not None and token.revoked_at == orm.revoked_at
    assert not token._state.adding and token._state.db == "default"
    assert same_fields(row_get(get_user_model(), pk=user.pk), user)
    assert same_fields(row_get(Tenant, slug="acme"), tenants["acme"])


def test_row_get_related_reads_the_parents_in_one_statement(tenants, make_user, make_token,
                                                            django_assert_num_queries):
    user = make_user("fay", tenants["globex"], "searcher")
    row, _ = make_token(user, tenants["globex"])
    with django_assert_num_queries(1):
        token = row_get_related(ApiToken, ("user", "tenant"), digest=row.digest)
        assert token.user_id == user.pk and token.tenant.slug == "globex"  # no further query
    assert same_fields(token, ApiToken.objects.get(pk=row.pk))
    assert same_fields(token.user, user) and same_fields(token.tenant, tenants["globex"])
    assert row_get_related(ApiToken, ("user", "tenant"), digest="no-such") is None
    assert row_get_related(ApiToken, ("user",), pk=2 ** 70) is None


def test_row_get_misses_cleanly(tenants):
    assert row_get(Tenant, slug="no-such") is None
    assert row_get(Tenant, pk=2 ** 70) is None  # beyond any integer column: no row, no driver error
    assert row_get(Tenant, pk=-(2 ** 70)) is None


def test_column_values(tenants, make_user):
    user = make_user("erin", tenants["acme"], "searcher", "curator")
    Membership.objects.create(user=user, tenant=tenants["globex"], role="admin")
    assert sorted(column_values(Membership, "role", user_id=user.pk, tenant_id=tenants["acme"].pk)) == \
        ["curator", "searcher"]
    assert column_values(Membership, "role", user_id=user.pk, tenant_id=2 ** 70) == []


def test_scoped_row_never_crosses_tenants(tenants):
    acme_kb = KnowledgeBase.objects.create(tenant=tenants["acme"], name="Shared name")
    globex_kb = KnowledgeBase.objects.create(tenant=tenants["globex"], name="Shared name")
    scope = Scope(tenant=tenants["acme"], user=None, roles=frozenset({"searcher"}))
    assert scoped_row(scope, KnowledgeBase, "kb.read", pk=acme_kb.pk).revision == acme_kb.revision
    assert scoped_row(scope, KnowledgeBase, "kb.read", name="Shared name").pk == acme_kb.pk
    assert scoped_row(scope, KnowledgeBase, "kb.read", pk=globex_kb.pk) is None
    assert scoped_row(Scope(tenant=None, user=None, roles=frozenset({"searcher"})), KnowledgeBase, "kb.read",
                      pk=acme_kb.pk) is None
