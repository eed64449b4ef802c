"""Shared fixtures: tenants, users by role, logged-in clients, API tokens.

`make test` passes fresh random keys in the environment; a bare `pytest` run
gets generated ones here, so no key is ever written into the repository.
"""
import logging
import secrets

import pytest

from keystore import keys as keystore_keys

if keystore_keys.get_keyring().errors:
    keystore_keys.install_keyring({
        keystore_keys.MODEL_KEY: secrets.token_hex(32),
        keystore_keys.AUDIT_KEY: secrets.token_hex(32),
    })


class _RunLog(logging.Handler):
    """Every log record of the whole run, formatted, for the no-key-in-logs test."""

    records: list[str] = []

    def emit(self, record):
        try:
            self.records.append(self.format(record))
        except Exception:  # a record that cannot format still must not break the run
            self.records.append(repr(record.__dict__))


RUN_LOG = _RunLog(level=logging.DEBUG)


def pytest_configure(config):
    root = logging.getLogger()
    root.addHandler(RUN_LOG)
    root.setLevel(min(root.level or logging.WARNING, logging.DEBUG))


def pytest_collection_modifyitems(session, config, items):
    # PostgreSQL-only behaviour runs in the PostgreSQL pass of `make test`
    # (tests/run_on_postgres.py); on SQLite it is deselected, not skipped.
    from django.db import connection

    # SQLite-only behaviour (its PRAGMAs) is deselected in the PostgreSQL pass.
    other = "postgresql_only" if connection.vendor != "postgresql" else "sqlite_only"
    deselected = [i for i in items if i.get_closest_marker(other)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if not i.get_closest_marker(other)]
    # The whole-run log check must see every other test's logs first.
    last = [i for i in items if i.get_closest_marker("run_last")]
    items[:] = [i for i in items if not i.get_closest_marker("run_last")] + last


@pytest.fixture
def tenants(db):
    from portal.models import Tenant

    return {
        "acme": Tenant.objects.create(slug="acme", name="Acme"),
        "globex": Tenant.objects.create(slug="globex", name="Globex"),
    }


@pytest.fixture
def make_user(db):
    from django.contrib.auth import get_user_model

    from portal.models import Membership

    def make(username, tenant, *roles, password="correct-horse-battery"):
        user = get_user_model().objects.create_user(username=username, password=password)
        for role in roles:
            Membership.objects.create(user=user, tenant=tenant, role=role)
        return user

    return make


@pytest.fixture
def login(client):
    def do(user):
        client.force_login(user)
        return client

    return do


@pytest.fixture
def make_token(db):
    from portal.services import token_create

    def make(user, tenant, days=30, label="test"):
        return token_create(user=user, tenant=tenant, days=days, label=label)

    return make


@pytest.fixture
def bearer():
    from rest_framework.test import APIClient

    def make(token_text):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_text}")
        return api

    return make


@pytest.fixture(autouse=True, scope="session")
def _flush_past_audit_triggers():
    """Transactional tests end with a flush (DELETE/TRUNCATE of every table),
    which the append-only triggers rightly refuse. Lift them for the flush
    only, then put them back, so every test still runs with them in place."""
    import importlib

    from django.db.backends.base.operations import BaseDatabaseOperations

    # The complete trigger set as the latest trigger migration leaves it.
    triggers = importlib.import_module("audit.migrations.0004_sanctioned_archive_delete")
    original = BaseDatabaseOperations.execute_sql_flush

    def flush(self, sql_list):
        create, drop = triggers.STATEMENTS[self.connection.vendor]
        with self.connection.cursor() as cursor:
            for statement in drop:
                cursor.execute(statement)
        try:
            original(self, sql_list)
        finally:
            with self.connection.cursor() as cursor:
                for statement in create:
                    cursor.execute(statement)

    BaseDatabaseOperations.execute_sql_flush = flush
    yield
    BaseDatabaseOperations.execute_sql_flush = original


@pytest.fixture(autouse=True)
def _empty_shared_cache():
    """Throttle counts live in the shared cache file; every test starts with none."""
    from django.core.cache import cache

    cache.clear()
