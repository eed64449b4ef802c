"""Schemathesis against the live OpenAPI document (issue 9, "must show"): a
real server with demo-like data (a tenant, a curator and a compliance token,
a knowledge base of a few documents, the sealed MiniLM), at least 1,000
generated requests, zero 5xx and zero responses outside the schema (status
codes, content types and bodies as documented).

Schemathesis runs as its own process (its command line, as CI would run it)
against pytest-django's live server; its HAR report is the record of every
request it actually sent, counted here."""
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.search.conftest import minilm_dir, minilm_engine, model_key, sealed_minilm  # noqa: F401
from tests.search.portal_fixtures import served  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MIN_REQUESTS = 1000
SEED = 20261128
# (who, which operations, examples per operation in the fuzzing phase)
# Token revocation runs last, with a token of its own: revoking token 1 is
# revoking itself, and every request after that is (rightly) a 401.
RUNS = [
    ("curator", ["--exclude-path-regex", "^/api/v1/(audit|tokens/)"], 50),
    ("compliance", ["--include-path-regex", "^/api/v1/audit"], 60),
    ("searcher", ["--include-path-regex", "^/api/v1/tokens"], 30),
]


@pytest.fixture
def portal(live_server, served, tenants, make_user, make_token, tmp_path, monkeypatch):
    from audit.ledger.models import AuditEvent
    from keystore.keys import get_keyring
    from keystore.signing import generate_signing_key
    from search.parsing import Entry
    from portal.scope import Scope
    from search.services import documents_import, kb_create
    from search.throttles import TokenOrUserRateThrottle

    acme = tenants["acme"]
    carol = make_user("carol", acme, "curator")
    chris = make_user("chris", acme, "compliance")
    sam = make_user("sam", acme, "searcher")
    kb = kb_create(scope=Scope(tenant=acme, user=carol), name="FAQ")
    documents_import(scope=Scope(tenant=kb.tenant, user=carol), kb=kb, entries=[Entry(n, text) for n, text in enumerate([
        "How do I reset my password? Use the self-service portal.",
        "The VPN token is renewed every 90 days by the help desk.",
        "Printers on the third floor need a badge to release jobs.",
        "Expense reports are due on the fifth working day of the month.",
        "Ask facilities for a desk in the quiet office.",
    ], 1)])
    assert AuditEvent.objects.filter(tenant=acme).exists()
    # The export signs its bundles: a signing key for this run, so 200 is reachable.
    ring = get_keyring()
    saved = ring.signing_key_pem
    generate_signing_key(tmp_path / "audit-signing.pem")
    ring.signing_key_pem = (tmp_path / "audit-signing.pem").read_bytes()
    # The throttle stays in place (429 is documented) but with room for the run:
    # its budget is tested in tests/portal/test_cache_and_throttle.py.
    monkeypatch.setattr(TokenOrUserRateThrottle, "THROTTLE_RATES", {"token_or_user": "100000/min"})
    yield {"url": live_server.url, "curator": make_token(carol, acme, label="schemathesis")[1],
           "compliance": make_token(chris, acme, label="schemathesis")[1],
           "searcher": make_token(sam, acme, label="schemathesis")[1]}
    ring.signing_key_pem = saved


def run_schemathesis(url: str, token: str, filters: list[str], examples: int, out: Path):
    out.mkdir()
    command = [str(SCHEMATHESIS), "run", f"{url}/api/v1/schema/", "--url", url,
               "--header", f"Authorization: Bearer {token}", "--checks", CHECKS,
               "--phases", "examples,coverage,fuzzing", "--mode", "all", "--max-examples", str(examples),
               "--seed", str(SEED), "--workers", "1", "--request-timeout", "60", "--no-color",
               "--generation-database", "none", "--suppress-health-check", "all",
               "--report", "har", "--report-dir", str(out), "--report-har-path", str(out / "run.har"),
               *filters]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="", NO_COLOR="1")
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=out)
    elapsed = time.monotonic() - started
    (out / "stdout.txt").write_text(done.stdout + done.stderr)
    entries = json.loads((out / "run.har").read_text())["log"]["entries"] if (out / "run.har").exists() else []
    return done, entries, elapsed


def test_schemathesis_finds_no_server_error_and_no_response_outside_the_schema(portal, tmp_path):
    statuses, operations, report = Counter(), Counter(), []
    for who, filters, examples in RUNS:
        done, entries, elapsed = run_schemathesis(portal["url"], portal[who], filters, examples, tmp_path / who)
        report.append(f"{who}: {len(entries)} requests in {elapsed:.0f}s, exit {done.returncode}")
        print(report[-1])
        assert done.returncode == 0, (f"schemathesis ({who}) found failures (full output in "
                                      f"{tmp_path / who / 'stdout.txt'}):\n" + done.stdout[-12000:] + done.stderr[-3000:])
        for entry in entries:
            statuses[entry["response"]["status"]] += 1
            path = entry["request"]["url"].split("?")[0].removeprefix(portal["url"])
            operations[(entry["request"]["method"], path)] += 1
    print(dict(sorted(statuses.items())))
    total = sum(statuses.values())
    assert total >= MIN_REQUESTS, report
    assert not [code for code in statuses if code >= 500], statuses
    # Not only refusals: every family of answer was reached.
    assert statuses[200] and statuses[201] and statuses[204] and statuses[400] and statuses[404], statuses
