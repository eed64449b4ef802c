"""deploy/sealed-search.service and deploy/sealed-search-worker.service: the
systemd units for hosts without Docker (issue 10, item 4; the import worker
since issue 12).

`systemd-analyze verify` must accept each (its executables pointed at this
checkout's virtualenv, since /opt/sealed-search does not exist here) without
a single warning, and `unit_violations` checks their rules; removing any rule
fails a mutation test. A missing systemd-analyze is a failure, not a skip
(.ci/run installs the systemd package).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "sealed-search.service"
WORKER_UNIT = ROOT / "deploy" / "sealed-search-worker.service"
UNITS = {"web": UNIT, "worker": WORKER_UNIT}
VENV_BIN = "/opt/sealed-search/venv/bin/"
# Each *_FILE variable and the credential (LoadCredential=) it must name, on
# the command lines themselves: an EnvironmentFile= would override Environment=.
KEYS = {"EMBED_MODEL_KEY_FILE": "embed-model.key", "AUDIT_HMAC_KEY_FILE": "audit-hmac.key",
        "AUDIT_SIGNING_KEY_FILE": "audit-signing.pem"}
PLAIN_SECRETS = ("EMBED_MODEL_KEY=", "AUDIT_HMAC_KEY=", "AUDIT_HMAC_OLD_KEYS=", "DJANGO_SECRET_KEY=", "PGPASSWORD=")


def _service_settings(text: str) -> list[tuple[str, str]]:
    """(key, value) of every line of [Service], in order (keys repeat)."""
    out, section = [], None
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def unit_violations(text: str, kind: str = "web") -> list[str]:
    """The rules every unit keeps; ``kind`` "web" runs migrations then
    gunicorn, "worker" runs the task worker (after the web unit migrated)."""
    problems = []
    settings = _service_settings(text)
    values: dict[str, list[str]] = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)

    def last(key):
        return values.get(key, [None])[-1]

    environment = " ".join(values.get("Environment", []))
    for key, expected in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                          ("ProtectHome", "yes")):
        if last(key) != expected:
            problems.append(f"unit.{key}: {key}={last(key)!r}, not {expected}")
    if last("CapabilityBoundingSet") != "":
        problems.append("unit.capabilities: CapabilityBoundingSet is not empty")
    user = last("User")
    if not user or user in ("root", "0") or last("DynamicUser") == "yes":
        problems.append("unit.user: no fixed non-root user")
    writable = " ".join(values.get("ReadWritePaths", [])).split()
    for folder in ("/var/lib/sealed-search", "/var/log/sealed-search"):
        if folder not in writable:
            problems.append(f"unit.writable: {folder} is not in ReadWritePaths")
    for variable in ("PORTAL_CACHE_DIR", "AUDIT_ARCHIVE_DIR"):
        match = re.search(rf"\b{variable}=(\S+)", environment)
        if not match or not match.group(1).startswith("/var/lib/sealed-search/"):
            problems.append(f"unit.writable: {variable} is not in the state folder")
    if not re.search(r"\bAUDIT_JSONL_PATH=/var/log/sealed-search/\S+", environment):
        problems.append("unit.audit_mirror: AUDIT_JSONL_PATH is not in /var/log/sealed-search")
    credentials = {v.split(":", 1)[0] for v in values.get("LoadCredential", [])}
    for variable, credential in KEYS.items():
        for command in ("ExecStartPre", "ExecStart") if kind == "web" else ("ExecStart",):
            line = " ".join(values.get(command, []))
            if credential not in credentials or not re.search(rf"\b{variable}=%d/{re.escape(credential)}(\s|$)", line):
                problems.append(f"unit.secrets: {command} does not give {variable} as the credential {credential}")
    for plain in PLAIN_SECRETS:
        if re.search(rf"(^|\s){plain}", environment):
            problems.append(f"unit.secrets: {plain.rstrip('=')} is a plain environment value")
    for variable, expected in (("PORTAL_MODE", "production"), ("DJANGO_DEBUG", "false"),
                               ("DJANGO_SECURE_COOKIES", "true")):
        if not re.search(rf"\b{variable}={expected}\b", environment):
            problems.append(f"unit.env.{variable}: {variable} is not {expected}")
    if not any(f.startswith("/etc/sealed-search/") for f in values.get("EnvironmentFile", [])):
        problems.append("unit.env: no EnvironmentFile for the site's settings")
    start = last("ExecStart") or ""
    if kind == "web":
        if not any(re.search(rf"{re.escape(VENV_BIN)}portal-manage migrate\b", v)
                   for v in values.get("ExecStartPre", [])):
            problems.append("unit.migrate_once: migrations do not run before gunicorn")
        if not start.endswith(f" {VENV_BIN}portal-serve"):
            problems.append("unit.gunicorn: ExecStart is not portal-serve (gunicorn with the portal's config) "
                            "from the virtualenv")
    elif not start.endswith(f" {VENV_BIN}portal-manage db_worker --no-reload"):
        problems.append("unit.worker: ExecStart is not the task worker (portal-manage db_worker --no-reload)")
    if last("Restart") not in ("on-failure", "always"):
        problems.append("unit.restart: no restart policy")
    return problems


def _verify(text: str, tmp_path: Path, name: str = UNIT.name) -> subprocess.CompletedProcess:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is not installed (Debian package systemd; .ci/run installs it)")
    bin_dir = tmp_path / "bin"  # stand-ins for scripts/install.sh's commands
    bin_dir.mkdir(exist_ok=True)
    for command in ("portal-serve", "portal-manage"):
        (bin_dir / command).write_text("#!/bin/sh\n")
        (bin_dir / command).chmod(0o755)
    unit = tmp_path / name
    unit.write_text(text.replace(VENV_BIN, f"{bin_dir}/"))
    return subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(tmp_path, kind):
    text = UNITS[kind].read_text()
    assert VENV_BIN in text
    result = _verify(text, tmp_path, UNITS[kind].name)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_verify_reports_an_unknown_option(tmp_path):
    """The check above would see a misspelt hardening option."""
    result = _verify(UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="), tmp_path)
    assert "Unknown key 'NoNewPrivilege'" in result.stderr


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_unit_rules(kind):
    assert unit_violations(UNITS[kind].read_text(), kind) == []


def _drop(key):
    return lambda t: re.sub(rf"(?m)^{key}=(.*\\\n)*.*\n", "", t)  # with its continuation lines


MUTATIONS = {
    "new-privileges": ("unit.NoNewPrivileges", _drop("NoNewPrivileges")),
    "protect-system": ("unit.ProtectSystem", lambda t: t.replace("ProtectSystem=strict", "ProtectSystem=full")),
    "private-tmp": ("unit.PrivateTmp", _drop("PrivateTmp")),
    "protect-home": ("unit.ProtectHome", _drop("ProtectHome")),
    "capabilities": ("unit.capabilities", _drop("CapabilityBoundingSet")),
    "root": ("unit.user", lambda t: t.replace("User=sealed-search", "User=root")),
    "no-writable-paths": ("unit.writable", _drop("ReadWritePaths")),
    "mirror-unset": ("unit.audit_mirror", lambda t: t.replace("AUDIT_JSONL_PATH=", "AUDIT_JSONL_PATH_X=")),
    "model-key-credential": ("unit.secrets", lambda t: t.replace(
        "LoadCredential=embed-model.key:", "#LoadCredential=embed-model.key:")),
    "key-path-not-credential": ("unit.secrets", lambda t: t.replace(
        "AUDIT_HMAC_KEY_FILE=%d/audit-hmac.key", "AUDIT_HMAC_KEY_FILE=/etc/sealed-search/keys/audit-hmac.key", 1)),
    "plain-key": ("unit.secrets", lambda t: t.replace("[Service]\n", "[Service]\nEnvironment=EMBED_MODEL_KEY=00\n")),
    "debug": ("unit.env.DJANGO_DEBUG", lambda t: t.replace("DJANGO_DEBUG=false", "DJANGO_DEBUG=true")),
    "no-env-file": ("unit.env", _drop("EnvironmentFile")),
    "no-restart": ("unit.restart", _drop("Restart")),
}
# Rules of one kind of unit only.
WEB_MUTATIONS = {"no-migrate": ("unit.migrate_once", _drop("ExecStartPre"))}
WORKER_MUTATIONS = {"not-the-worker": ("unit.worker", lambda t: t.replace(" db_worker --no-reload", " db_worker"))}
CASES = ([("web", m) for m in sorted({**MUTATIONS, **WEB_MUTATIONS})]
         + [("worker", m) for m in sorted({**MUTATIONS, **WORKER_MUTATIONS})])


@pytest.mark.parametrize("kind,mutation", CASES)
def test_removing_a_unit_rule_fails_the_check(kind, mutation):
    rule, mutate = {**MUTATIONS, **WEB_MUTATIONS, **WORKER_MUTATIONS}[mutation]
    text = UNITS[kind].read_text()
    changed = mutate(text)
    assert changed != text, "the mutation no longer applies to the unit"
    assert rule in {p.split(":")[0] for p in unit_violations(changed, kind)}
