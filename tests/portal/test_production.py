"""Production settings by environment only (issue 10, items 1 and 4's audit
policy): `check --deploy` clean with the documented environment, missing or
weakened settings stop startup naming the variable, X-Forwarded-Proto only
from TRUSTED_PROXIES, JSON logs on stdout without query strings or keys."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit.ledger.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
HEX_A = "a1" * 32
HEX_B = "b2" * 32


@pytest.fixture(scope="module")
def production_env(tmp_path_factory):
    """The documented production environment (README, "Production"); keys as *_FILE."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = tmp_path_factory.mktemp("production")
    (folder / "model.key").write_text(HEX_A + "\n")
    (folder / "audit.key").write_text(HEX_B + "\n")
    (folder / "signing.pem").write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EMBED_MODEL_KEY", "AUDIT_", "DJANGO_", "PORTAL_MODE", "TRUSTED_PROXIES",
                                "LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR"))}
    env.update(
        PORTAL_DOTENV="",
        EMBED_MODEL_KEY_FILE=str(folder / "model.key"),
        AUDIT_HMAC_KEY_FILE=str(folder / "audit.key"),
        AUDIT_SIGNING_KEY_FILE=str(folder / "signing.pem"),
        DJANGO_ALLOWED_HOSTS="search.bank.internal",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://search.bank.internal",
        DJANGO_HSTS_SECONDS="31536000",
        DJANGO_SECURE_COOKIES="true",
        TRUSTED_PROXIES="10.20.0.5/32",
        DATABASE_URL=f"sqlite:///{folder / 'portal.sqlite3'}",
    )
    return env


def run(env: dict, *args: str, wsgi: bool = False):
    command = [sys.executable, "-c", "import portal.wsgi"] if wsgi else [sys.executable, "manage.py", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def without(env: dict, *names: str, **changes) -> dict:
    out = {k: v for k, v in env.items() if k not in names}
    out.update(changes)
    return out


def test_check_deploy_is_clean_with_the_documented_production_environment(production_env):
    result = run(production_env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["DJANGO_ALLOWED_HOSTS", "DJANGO_CSRF_TRUSTED_ORIGINS", "DJANGO_HSTS_SECONDS",
                                  "TRUSTED_PROXIES"])
def test_a_missing_production_variable_stops_startup_naming_it(production_env, name):
    env = without(production_env, name)
    result = run(env, "check")
    assert result.returncode != 0
    assert f"{name} must be set in production" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_the_wsgi_worker_refuses_to_start_without_production_settings(production_env):
    result = run(without(production_env, "DJANGO_ALLOWED_HOSTS"), wsgi=True)
    assert result.returncode != 0 and "DJANGO_ALLOWED_HOSTS must be set in production" in result.stderr


@pytest.mark.parametrize("changes,message", [
    ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG must be off in production"),
    ({"DJANGO_SECURE_COOKIES": "false"}, "DJANGO_SECURE_COOKIES must be true in production"),
    ({"DJANGO_CSRF_TRUSTED_ORIGINS": "http://search.bank.internal"}, "must be https://host[:port] origins"),
    ({"DJANGO_HSTS_SECONDS": "a year"}, "DJANGO_HSTS_SECONDS must be a whole number"),
    ({"PORTAL_MODE": "staging"}, "PORTAL_MODE must be 'production' or 'development'"),
    # pgvector's ranges, checked at startup rather than at the first index build
    ({"SEARCH_HNSW_M": "1"}, "SEARCH_HNSW_M must be from 2 to 100, not 1"),
    ({"SEARCH_HNSW_EF_CONSTRUCTION": "5000"}, "SEARCH_HNSW_EF_CONSTRUCTION must be from 4 to 1000, not 5000"),
    ({"SEARCH_HNSW_M": "64", "SEARCH_HNSW_EF_CONSTRUCTION": "100"},
     "SEARCH_HNSW_EF_CONSTRUCTION (100) must be at least twice SEARCH_HNSW_M (64)"),
    ({"SEARCH_HNSW_EF_SEARCH": "0"}, "SEARCH_HNSW_EF_SEARCH must be from 1 to 1000, not 0"),
])
def test_an_unsafe_production_value_stops_startup_naming_it(production_env, changes, message):
    result = run(without(production_env, **changes), "check")
    assert result.returncode != 0 and message in result.stdout + result.stderr


SHOW = """
import json, logging
from django.conf import settings
from audit.ledger.retention import retention_cutoff
from audit.ledger.services import stored_query
names = ["SESSION_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY", "SESSION_COOKIE_SAMESITE", "CSRF_COOKIE_SECURE",
         "CSRF_COOKIE_HTTPONLY", "CSRF_COOKIE_SAMESITE", "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT",
         "SECURE_PROXY_SSL_HEADER", "ALLOWED_HOSTS", "DEBUG", "AUDIT_RETENTION_DAYS", "AUDIT_QUERY_MODE",
         "AUDIT_CHECKPOINT_EVERY_EVENTS", "AUDIT_CHECKPOINT_EVERY_MINUTES", "AUDIT_JSONL_PATH"]
shown = {n: getattr(settings, n) for n in names}
shown["stored"] = stored_query("where is my salary slip")
import datetime as dt
now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
shown["cutoff_days"] = (now - retention_cutoff(now)).days
print("SETTINGS " + json.dumps(shown))
logging.getLogger("django.request").warning("Not Found: /api/v1/audit/export?signature=s3cr3tsig&q=salary")
logging.getLogger("portal.test").error("key %s leaked", "HEXKEY")
"""


def show(env: dict) -> tuple[dict, list[str], subprocess.CompletedProcess]:
    result = run(env, "shell", "-v", "0", "-c", SHOW.replace("HEXKEY", HEX_A))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    shown = json.loads(next(line for line in lines if line.startswith("SETTINGS "))[len("SETTINGS "):])
    return shown, [line for line in lines if not line.startswith("SETTINGS ")], result


def test_production_cookies_https_and_json_logs(production_env):
    shown, log_lines, result = show(production_env)
    assert shown["SESSION_COOKIE_SECURE"] and shown["CSRF_COOKIE_SECURE"]
    assert shown["SESSION_COOKIE_HTTPONLY"] and shown["CSRF_COOKIE_HTTPONLY"]
    assert shown["SESSION_COOKIE_SAMESITE"] == shown["CSRF_COOKIE_SAMESITE"] == "Lax"
    assert shown["SECURE_HSTS_SECONDS"] == 31536000 and shown["SECURE_SSL_REDIRECT"] is True
    assert shown["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert shown["ALLOWED_HOSTS"] == ["search.bank.internal"] and shown["DEBUG"] is False
    # Logs: one JSON object a line on stdout, no query string, no key.
    records = [json.loads(line) for line in log_lines if line.strip()]
    messages = [r["message"] for r in records]
    assert any(m.startswith("Not Found: /api/v1/audit/export?") for m in messages), log_lines
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    everything = result.stdout + result.stderr
    assert "s3cr3tsig" not in everything and "salary" not in everything.replace("salary slip", "")
    assert HEX_A not in everything and "key [key removed] leaked" in messages


def test_development_mode_is_plain_http_on_loopback(settings):
    # The suite itself runs as `make run` does (pyproject: PORTAL_MODE=development).
    assert settings.PORTAL_MODE == "development" and settings.SECURE_SSL_REDIRECT is False
    assert "127.0.0.1" in settings.ALLOWED_HOSTS and settings.LOG_FORMAT == "plain"


def test_x_forwarded_proto_is_believed_only_from_trusted_proxies(settings, client):
    settings.TRUSTED_PROXIES = ["10.20.0.5/32"]
    settings.SECURE_SSL_REDIRECT = True
    from_proxy = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="10.20.0.5")
    assert from_proxy.status_code == 200
    assert from_proxy.wsgi_request.is_secure()
    spoofed = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="192.0.2.9")
    assert spoofed.status_code == 301 and spoofed["Location"].startswith("https://")
    # Health probes and the metrics scraper answer on plain HTTP.
    assert client.get("/healthz", REMOTE_ADDR="127.0.0.1").status_code == 200


def test_an_older_make_run_env_gets_the_development_flag(tmp_path):
    from portal.devenv import HEADER, write_dev_env

    fresh = tmp_path / "fresh.env"
    assert write_dev_env(fresh) and "PORTAL_MODE=development" in fresh.read_text()
    older = tmp_path / "older.env"
    older.write_text(HEADER + "\nEMBED_MODEL_KEY=" + HEX_A + "\n")
    assert not write_dev_env(older)
    assert older.read_text().endswith("PORTAL_MODE=development\n")
    write_dev_env(older)
    assert older.read_text().count("PORTAL_MODE=") == 1
    operator = tmp_path / "operator.env"
    operator.write_text("DJANGO_ALLOWED_HOSTS=search.bank.internal\n")
    write_dev_env(operator)
    assert "PORTAL_MODE" not in operator.read_text()


# --- the audit policy (config/audit-policy.json) -------------------------------

def policy_file(folder: Path, **changes) -> Path:
    values = json.loads((ROOT / "config" / "audit-policy.json").read_text())
    values.update(changes)
    path = folder / "audit-policy.json"
    path.write_text(json.dumps(values))
    return path


def test_the_shipped_policy_holds_todays_defaults():
    errors = []
    policy = load_policy(ROOT / "config" / "audit-policy.json", {}, errors)
    assert errors == []
    assert (policy.retention_days, policy.query_mode, policy.checkpoint_every_events,
            policy.checkpoint_every_minutes, policy.mirror_path) == (365, "full", 1000, 60, None)


def test_the_policy_file_sets_the_retention_and_query_mode_in_force(production_env, tmp_path):
    path = policy_file(tmp_path, retention_days=400, query_mode="hash", checkpoint_every_events=50,
                       checkpoint_every_minutes=5, mirror_path=str(tmp_path / "siem.jsonl"))
    shown, _, _ = show(without(production_env, AUDIT_POLICY_FILE=str(path)))
    assert shown["AUDIT_RETENTION_DAYS"] == 400 and shown["cutoff_days"] == 400
    assert shown["AUDIT_QUERY_MODE"] == "hash" and shown["stored"].startswith("hmac-sha256:")
    assert (shown["AUDIT_CHECKPOINT_EVERY_EVENTS"], shown["AUDIT_CHECKPOINT_EVERY_MINUTES"]) == (50, 5)
    assert shown["AUDIT_JSONL_PATH"] == str(tmp_path / "siem.jsonl")
    # The environment may make it stricter.
    stricter = without(production_env, AUDIT_POLICY_FILE=str(path), AUDIT_RETENTION_DAYS="3650")
    assert show(stricter)[0]["cutoff_days"] == 3650


@pytest.mark.parametrize("file_values,variable,value", [
    ({"retention_days": 400}, "AUDIT_RETENTION_DAYS", "30"),
    ({"query_mode": "hash"}, "AUDIT_QUERY_MODE", "full"),
    ({"query_mode": "truncate:50"}, "AUDIT_QUERY_MODE", "truncate:200"),
    ({"checkpoint_every_events": 100}, "AUDIT_CHECKPOINT_EVERY_EVENTS", "0"),
    ({"checkpoint_every_minutes": 10}, "AUDIT_CHECKPOINT_EVERY_MINUTES", "60"),
    ({"mirror_path": "/var/log/portal/audit.jsonl"}, "AUDIT_JSONL_PATH", "/tmp/elsewhere.jsonl"),
])
def test_the_environment_cannot_weaken_the_policy(tmp_path, file_values, variable, value):
    path = policy_file(tmp_path, **file_values)
    errors = []
    policy = load_policy(path, {variable: value}, errors)
    assert len(errors) == 1
    assert variable in errors[0] and str(path) in errors[0] and "stricter" in errors[0]
    field = next(iter(file_values))
    assert getattr(policy, field) == file_values[field], "the weaker value was put in force"


@pytest.mark.parametrize("file_values,variable,value,field,expected", [
    ({"retention_days": 400}, "AUDIT_RETENTION_DAYS", "400", "retention_days", 400),
    ({"query_mode": "full"}, "AUDIT_QUERY_MODE", "truncate:200", "query_mode", "truncate:200"),
    ({"query_mode": "truncate:200"}, "AUDIT_QUERY_MODE", "truncate:80", "query_mode", "truncate:80"),
    ({"query_mode": "truncate:200"}, "AUDIT_QUERY_MODE", "hash", "query_mode", "hash"),
    ({"checkpoint_every_events": 0}, "AUDIT_CHECKPOINT_EVERY_EVENTS", "500", "checkpoint_every_events", 500),
    ({"checkpoint_every_minutes": 60}, "AUDIT_CHECKPOINT_EVERY_MINUTES", "15", "checkpoint_every_minutes", 15),
    ({"mirror_path": None}, "AUDIT_JSONL_PATH", "/var/log/audit.jsonl", "mirror_path", "/var/log/audit.jsonl"),
])
def test_the_environment_can_make_the_policy_stricter(tmp_path, file_values, variable, value, field, expected):
    errors = []
    policy = load_policy(policy_file(tmp_path, **file_values), {variable: value}, errors)
    assert errors == [] and getattr(policy, field) == expected


def test_a_weakening_environment_stops_startup_naming_the_variable_and_the_file(production_env, tmp_path):
    path = policy_file(tmp_path, retention_days=400)
    env = without(production_env, AUDIT_POLICY_FILE=str(path), AUDIT_RETENTION_DAYS="30")
    for result in (run(env, "check"), run(env, wsgi=True)):
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "AUDIT_RETENTION_DAYS=30 is shorter than retention_days 400" in output
        assert str(path) in output and "AUDIT_POLICY_FILE" in output


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("{not json", "could not be read as JSON"),
    (json.dumps({"retention_days": 365}), "lacks fields"),
    (json.dumps({"retention_days": 0, "query_mode": "full", "checkpoint_every_events": 1,
                 "checkpoint_every_minutes": 1, "mirror_path": None}), "retention_days in"),
    (json.dumps({"retention_days": 365, "query_mode": "everything", "checkpoint_every_events": 1,
                 "checkpoint_every_minutes": 1, "mirror_path": None, "retension": 1}), "unknown fields: retension"),
])
def test_a_bad_policy_file_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "policy.json"
    if content is not None:
        path.write_text(content)
    errors = []
    load_policy(path, {}, errors)
    assert any(message in e and str(path) in e for e in errors), errors
