"""The scope (portal/scope.py): resolved once per request or command, the only
way selectors and services learn who acts; scoped() checks the capability and
narrows the rows in one call."""
import ast
import inspect
from pathlib import Path

import pytest

from portal.scope import Scope, command_scope, scoped
from search.models import KnowledgeBase

ROOT = Path(__file__).resolve().parents[2]
APPS = ("audit", "portal", "search")


def python_files(*folders):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            # bench/out/ holds the benchmark peers' virtualenvs (git-ignored), not ours.
            if "migrations" not in path.parts and not path.is_relative_to(ROOT / "bench" / "out"):
                yield path


def test_no_module_outside_portal_reaches_into_the_wrapped_request():
    """DRF's ``request._request`` is portal's business (the API base builds the
    scope from it); everything else gets the scope."""
    offenders = []
    for path in python_files("audit", "search", "keystore", "bench", "tools", "delivery"):
        tree = ast.parse(path.read_text(), str(path))
        offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and node.attr == "_request"]
    assert not offenders, offenders


def test_no_selector_or_service_takes_a_request():
    offenders = []
    paths = [path for app in APPS for name in ("selectors.py", "services.py") for path in (ROOT / app).rglob(name)]
    assert len(paths) >= 5, paths  # search, portal, audit's ledger and review: the walk finds them
    for path in paths:
            app, name = path.parent.relative_to(ROOT), path.name
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args
                    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                    if "request" in names:
                        offenders.append(f"{app}/{name}:{node.lineno} {node.name}")
    assert not offenders, offenders


def test_scoped_has_no_default_capability():
    assert inspect.signature(scoped).parameters["capability"].default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        scoped(Scope(tenant=None, user=None), KnowledgeBase)  # noqa: the forgotten capability


def test_scoped_gives_the_acting_tenants_rows_only_with_the_capability(tenants):
    acme = KnowledgeBase.objects.create(tenant=tenants["acme"], name="Acme FAQ")
    KnowledgeBase.objects.create(tenant=tenants["globex"], name="Globex FAQ")
    searcher = Scope(tenant=tenants["acme"], user=None, roles=frozenset({"searcher"}))
    officer = Scope(tenant=tenants["acme"], user=None, roles=frozenset({"compliance"}))
    assert list(scoped(searcher, KnowledgeBase, "kb.read")) == [acme]
    assert list(scoped(officer, KnowledgeBase, "kb.read")) == []  # no capability: nothing, not everything
    assert list(scoped(Scope(tenant=None, user=None, roles=frozenset({"admin"})), KnowledgeBase, "kb.read")) == []
    with pytest.raises(KeyError):
        scoped(searcher, KnowledgeBase, "kb.raed")  # a misspelt capability is an error, not a pass


def test_a_scope_cannot_be_changed(tenants):
    scope = Scope(tenant=tenants["acme"], user=None, roles=frozenset({"searcher"}))
    with pytest.raises(AttributeError):
        scope.tenant = tenants["globex"]


def test_page_and_api_requests_carry_the_same_scope_the_audit_records(tenants, make_user, login, make_token,
                                                                       bearer):
    from audit.models import AuditEvent

    user = make_user("scoped", tenants["acme"], "searcher")
    session = login(user)  # a searcher may read knowledge bases, not manage them
    assert session.post("/kbs/", {"name": "x"}, HTTP_USER_AGENT="page-agent").status_code == 403
    page = AuditEvent.objects.filter(action="access.denied").latest("seq")
    assert (page.auth_method, page.user_agent, page.tenant_id, page.username) == (
        "session", "page-agent", tenants["acme"].pk, "scoped")
    assert page.session_digest and page.request_id and page.detail["path"] == "/kbs/"
    row, text = make_token(user, tenants["acme"])
    api = bearer(text)
    assert api.post("/api/v1/kbs", {"name": "x"}, format="json", HTTP_USER_AGENT="api-agent").status_code == 404
    token = AuditEvent.objects.filter(action="access.denied").latest("seq")
    assert (token.auth_method, token.token_id, token.user_agent, token.session_digest, token.username) == (
        "token", row.pk, "api-agent", "", "scoped")
    assert token.request_id and token.request_id != page.request_id


def test_a_command_scope_is_built_from_its_options(tenants, make_user):
    from portal.cli import scope_from_options

    user = make_user("operator-sam", tenants["acme"], "curator")
    scope = scope_from_options("token_create", tenant="acme", user="operator-sam")
    assert (scope.tenant, scope.user, scope.roles) == (tenants["acme"], user, frozenset({"curator"}))
    assert scope.context == {"auth_method": "cli", "user_agent": "manage.py token_create"}
    # Without --user the operator acts for the tenant with every role (kb_import).
    assert command_scope("kb_import", tenant=tenants["acme"]).can("kb.manage")
