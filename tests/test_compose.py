"""docker-compose.yml (GPU) and docker-compose.cpu.yml (CPU), and the Dockerfile
(issue 10, item 3).

No container engine runs here, so these tests check what can be checked
offline: `docker-compose config` (Debian's docker-compose 1.29) must accept
both variants, and every rule of item 3 is asserted on its parsed output by
one plain function, `compose_violations`. The mutation tests remove each rule
in turn from a temporary copy of the file, run `docker-compose config` on the
copy, and require the checker to name the rule: so deleting a rule from a
compose file fails this suite. The Dockerfile gets the same treatment
(`dockerfile_violations`). A missing docker-compose is a failure, not a skip.

Runs without Django's database: pytest tests/test_compose.py -p no:django
"""
from __future__ import annotations

import copy
import functools
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"gpu": ROOT / "docker-compose.yml", "cpu": ROOT / "docker-compose.cpu.yml"}
DOCKERFILE = ROOT / "Dockerfile"

# What an operator's .env gives compose (the required variables).
COMPOSE_ENV = {
    "DJANGO_ALLOWED_HOSTS": "search.example.org",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://search.example.org",
    "DJANGO_HSTS_SECONDS": "31536000",
    "TRUSTED_PROXIES": "172.16.0.0/12",
}
# Keys: each *_FILE variable and the compose secret it must name.
KEY_SECRETS = {
    "EMBED_MODEL_KEY_FILE": "embed_model_key",
    "AUDIT_HMAC_KEY_FILE": "audit_hmac_key",
    "AUDIT_SIGNING_KEY_FILE": "audit_signing_key",
    "PORTAL_DB_PASSWORD_FILE": "db_password",
}
# Variables that would carry a secret's value itself: never in the environment.
PLAIN_SECRET_VARIABLES = {"EMBED_MODEL_KEY", "AUDIT_HMAC_KEY", "AUDIT_HMAC_OLD_KEYS", "DJANGO_SECRET_KEY",
                          "POSTGRES_PASSWORD", "PGPASSWORD", "AUDIT_SIGNING_KEY"}
PORTAL_SERVICES = ("web", "migrate", "worker")
PINNED_PGVECTOR = re.compile(r"^pgvector/pgvector:(\d+\.\d+\.\d+-pg\d+(\.\d+)?)(@sha256:[0-9a-f]{64})?$"
                             r"|^pgvector/pgvector(:[^@]+)?@sha256:[0-9a-f]{64}$")


# --- running docker-compose ------------------------------------------------------

def _compose_exe() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (Debian package docker-compose; .ci/run installs it)")
    return exe


@functools.cache
def _empty_env_file() -> str:
    """Compose wants a real file for --env-file (not /dev/null): an empty one
    keeps a developer's .env out of the tests."""
    fd, name = tempfile.mkstemp(prefix="compose-", suffix=".env")
    os.close(fd)
    return name


def run_compose_config(path: Path, variables: dict[str, str] = COMPOSE_ENV) -> subprocess.CompletedProcess:
    """`docker-compose config` on ``path``, relative paths resolved from the
    project root, with only ``variables`` (no .env, no caller's shell)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           **variables}
    return subprocess.run(
        [_compose_exe(), "--env-file", _empty_env_file(), "--project-directory", str(ROOT), "-f", str(path), "config"],
        capture_output=True, text=True, env=env, timeout=120)


def compose_config(path: Path) -> dict:
    result = run_compose_config(path)
    assert result.returncode == 0, f"docker-compose config {path.name} failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


# --- the checker -----------------------------------------------------------------

def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def _mounts(service: dict) -> list[dict]:
    """Volumes as dicts (type, source, target, read_only), short syntax included."""
    out = []
    for item in service.get("volumes") or []:
        if isinstance(item, str):
            parts = item.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
            options = parts[2].split(",") if len(parts) > 2 else []
            kind = "bind" if source and (source.startswith(("/", ".", "~"))) else "volume"
            out.append({"type": kind, "source": source, "target": target, "read_only": "ro" in options})
        else:
            out.append({"type": item.get("type"), "source": item.get("source"), "target": item.get("target"),
                        "read_only": bool(item.get("read_only"))})
    return out


def _under(path: str, folder: str) -> bool:
    return PurePosixPath(folder) in (PurePosixPath(path), *PurePosixPath(path).parents)


def _devices(service: dict) -> list:
    return (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []


def _healthcheck_text(service: dict) -> str | None:
    check = service.get("healthcheck")
    if not check or check.get("disable") or not check.get("test") or check.get("test") == ["NONE"]:
        return None
    test = check["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def compose_violations(config: dict, variant: str) -> list[str]:
    """Every rule of issue 10 item 3 that ``config`` (parsed `docker-compose
    config` output) breaks, each as "rule-id: what is wrong"."""
    problems: list[str] = []

    def bad(rule: str, text: str):
        problems.append(f"{rule}: {text}")

    services = config.get("services") or {}
    volumes = config.get("volumes") or {}
    top_secrets = config.get("secrets") or {}
    for name in ("db", "migrate", "web"):
        if name not in services:
            bad(f"{name}.service" if name != "migrate" else "web.migrate_once", f"no `{name}` service")
    db = services.get("db") or {}
    web = services.get("web") or {}

    # db: the public pgvector image at a pinned tag, a named volume, pg_isready.
    if not PINNED_PGVECTOR.match(str(db.get("image", ""))):
        bad("db.image", f"image {db.get('image')!r} is not pgvector/pgvector at a pinned version tag")
    if not any(m["type"] == "volume" and m["source"] in volumes and m["target"] == "/var/lib/postgresql/data"
               for m in _mounts(db)):
        bad("db.volume", "the data folder is not on a named volume")
    if "pg_isready" not in (_healthcheck_text(db) or ""):
        bad("db.healthcheck", "no pg_isready health check")
    db_env = _environment(db)
    if (db_env.get("POSTGRES_PASSWORD_FILE") != "/run/secrets/db_password"
            or "db_password" not in _secret_names(db) or "db_password" not in top_secrets):
        bad("db.password", "the password is not the db_password secret through POSTGRES_PASSWORD_FILE")
    for name in PLAIN_SECRET_VARIABLES & db_env.keys():
        bad("db.password", f"{name} is a plain environment value")

    # web (and, for what applies to any portal process, migrate).
    if web.get("build", {}).get("dockerfile") != "Dockerfile" or Path(web.get("build", {}).get("context", "/nonexistent")) != ROOT:
        bad("web.build", "web's image is not built by the Dockerfile from the archive root")
    migrate = services.get("migrate") or {}
    if (web.get("depends_on") or {}).get("migrate", {}).get("condition") != "service_completed_successfully":
        bad("web.migrate_once", "web does not wait for the migrate service to complete successfully")
    if migrate:
        if "migrate" not in (migrate.get("command") or []):
            bad("web.migrate_once", "the migrate service does not run `migrate`")
        if migrate.get("image") != web.get("image"):
            bad("web.migrate_once", "the migrate service runs another image than web")
        if str(migrate.get("restart", "no")) != "no":
            bad("web.migrate_once", "the migrate service restarts (it must run once)")
        if (migrate.get("depends_on") or {}).get("db", {}).get("condition") != "service_healthy":
            bad("web.migrate_once", "the migrate service does not wait for a healthy db")
    if "/readyz" not in (_healthcheck_text(web) or ""):
        bad("web.readyz", "no /readyz health check")
    if "gunicorn" not in (web.get("command") or []):
        bad("web.gunicorn", "web does not run gunicorn")
    if str(web.get("restart", "no")) not in ("always", "unless-stopped", "on-failure"):
        bad("web.restart", f"restart policy {web.get('restart')!r}")
    limits = ((web.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    if not limits.get("memory") or not limits.get("cpus"):
        bad("web.limits", "no memory and cpu limits")
    web_env = _environment(web)
    mounts = _mounts(web)
    if not any(m["target"] == "/app/model" and m["type"] == "bind" and m["read_only"] for m in mounts):
        bad("web.model_ro", "the model folder is not mounted read-only at /app/model")
    if not _under(web_env.get("EMBED_MODEL_PATH", ""), "/app/model"):
        bad("web.model_ro", "EMBED_MODEL_PATH is not in the read-only model folder")

    for name in PORTAL_SERVICES:
        service = services.get(name)
        if not service:
            continue
        env = _environment(service)
        user = str(service.get("user", ""))
        if not user or user.split(":")[0] in ("0", "root"):
            bad(f"{name}.user", f"runs as {user or 'the image default'!r}, not a fixed non-root user")
        if not any(opt.replace("=", ":") in ("no-new-privileges", "no-new-privileges:true")
                   for opt in service.get("security_opt") or []):
            bad(f"{name}.no_new_privileges", "no security_opt no-new-privileges")
        if "ALL" not in (service.get("cap_drop") or []) or service.get("cap_add"):
            bad(f"{name}.cap_drop", "capabilities are not all dropped")
        if service.get("read_only") is not True:
            bad(f"{name}.read_only", "the root filesystem is writable")
        tmpfs = service.get("tmpfs") or []
        tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
        if not any(t.split(":")[0] == "/tmp" for t in tmpfs):
            bad(f"{name}.tmpfs", "no tmpfs at /tmp")
        # Keys: compose secrets read through *_FILE, never values.
        for variable, secret in KEY_SECRETS.items():
            if env.get(variable) != f"/run/secrets/{secret}" or secret not in _secret_names(service) \
                    or "file" not in (top_secrets.get(secret) or {}):
                bad(f"{name}.secrets", f"{variable} does not name the compose secret {secret}")
        for variable in sorted(PLAIN_SECRET_VARIABLES & env.keys()):
            bad(f"{name}.secrets", f"{variable} is a plain environment value")
        url = urlsplit(env.get("DATABASE_URL", ""))
        if url.scheme not in ("postgres", "postgresql", "pgsql") or url.hostname != "db":
            bad(f"{name}.env.DATABASE_URL", "DATABASE_URL is not PostgreSQL on the db service")
        if url.password:
            bad(f"{name}.secrets", "DATABASE_URL holds a password")
        if env.get("PGPASSFILE") and not any(_under(env["PGPASSFILE"], t.split(":")[0]) for t in tmpfs):
            bad(f"{name}.secrets", "the libpq password file is not on the tmpfs")
        # Production settings (SPEC section 10).
        if env.get("DJANGO_DEBUG", "").lower() not in ("false", "0", "no", "off"):
            bad(f"{name}.env.DJANGO_DEBUG", "DJANGO_DEBUG is not false")
        if env.get("PORTAL_MODE", "production") != "production":
            bad(f"{name}.env.PORTAL_MODE", "PORTAL_MODE is not production")
        for variable in ("DJANGO_ALLOWED_HOSTS", "DJANGO_CSRF_TRUSTED_ORIGINS", "TRUSTED_PROXIES"):
            if not env.get(variable, "").strip(","):
                bad(f"{name}.env.{variable}", f"{variable} is not set")
        if not env.get("DJANGO_HSTS_SECONDS", "").isdigit() or int(env["DJANGO_HSTS_SECONDS"]) <= 0:
            bad(f"{name}.env.DJANGO_HSTS_SECONDS", "DJANGO_HSTS_SECONDS is not a positive number")
        if env.get("DJANGO_SECURE_COOKIES", "").lower() not in ("true", "1", "yes", "on"):
            bad(f"{name}.env.DJANGO_SECURE_COOKIES", "DJANGO_SECURE_COOKIES is not true")
        if env.get("AUDIT_POLICY_FILE") != "/app/config/audit-policy.json" or not any(
                m["target"] == "/app/config" and m["read_only"] for m in _mounts(service)):
            bad(f"{name}.env.AUDIT_POLICY_FILE", "AUDIT_POLICY_FILE is not config/audit-policy.json mounted read-only")
        # With a read-only root, everything the portal writes is on a volume or tmpfs.
        writable = [m["target"] for m in _mounts(service) if m["type"] == "volume" and not m["read_only"]]
        writable += [t.split(":")[0] for t in tmpfs]
        for variable in ("PORTAL_CACHE_DIR", "AUDIT_ARCHIVE_DIR", "AUDIT_EXPORT_DIR"):
            if not any(_under(env.get(variable, "/nonexistent"), w) for w in writable):
                bad(f"{name}.writable", f"{variable} is not on a volume or tmpfs")
        # The audit JSONL mirror on its own named volume.
        mirror = env.get("AUDIT_JSONL_PATH", "")
        owners = [m for m in _mounts(service) if m["type"] == "volume" and mirror and _under(mirror, m["target"])]
        own = (len(owners) == 1 and owners[0]["source"] in volumes
               and sum(m["source"] == owners[0]["source"] for m in _mounts(service)) == 1
               and not any(_under(env.get(v, ""), owners[0]["target"])
                           for v in ("PORTAL_CACHE_DIR", "AUDIT_ARCHIVE_DIR", "AUDIT_EXPORT_DIR")))
        if not own:
            bad(f"{name}.audit_mirror", "AUDIT_JSONL_PATH is not on a named volume of its own")

    # GPU reservation, or none at all.
    device = web_env.get("EMBED_DEVICE", "")
    if variant == "gpu":
        if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in _devices(web)):
            bad("web.gpu", "no nvidia GPU reservation for web")
        if not re.fullmatch(r"cuda(:\d+)?", device):
            bad("web.gpu", f"EMBED_DEVICE is {device!r}, not cuda")
    else:
        for name, service in services.items():
            if _devices(service) or service.get("runtime") == "nvidia":
                bad("web.cpu", f"{name} reserves a device in the CPU variant")
        if device != "cpu":
            bad("web.cpu", f"EMBED_DEVICE is {device!r}, not cpu")
    return problems


def _secret_names(service: dict) -> set[str]:
    return {s if isinstance(s, str) else s.get("source") for s in service.get("secrets") or []}


def dockerfile_violations(text: str) -> list[str]:
    """The Dockerfile's rules: built offline from wheelhouse/, runs as non-root."""
    problems = []
    logical = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in logical.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if re.search(r"^#\s*syntax\s*=", text, re.M | re.I):
        problems.append("dockerfile.offline: a `# syntax=` line makes BuildKit fetch a frontend image")
    if not any(re.match(r"COPY\s+(--\S+\s+)*wheelhouse/?\s+/wheelhouse/?$", line) for line in lines):
        problems.append("dockerfile.wheelhouse: wheelhouse/ is not copied to /wheelhouse")
    installs = [m.group(0) for line in lines for m in re.finditer(r"pip\s+install[^&;|]*", line)]
    if not installs:
        problems.append("dockerfile.wheelhouse: nothing is installed from the wheelhouse")
    for command in installs:
        if "--no-index" not in command or not re.search(r"--find-links[ =]/wheelhouse\b", command):
            problems.append(f"dockerfile.offline: `{command.strip()}` may reach a package index")
    for line in lines:
        if re.search(r"\b(curl|wget|apt-get|apk|git\s+clone|easy_install)\b", line) or re.match(r"ADD\s+\S*://", line):
            problems.append(f"dockerfile.offline: `{line[:60]}` fetches from the network")
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    final_stage = max((i for i, line in enumerate(lines) if line.upper().startswith("FROM ")), default=0)
    final_users = [line.split()[1] for line in lines[final_stage:] if line.upper().startswith("USER ")]
    if not users or not final_users or final_users[-1].split(":")[0] in ("0", "root"):
        problems.append("dockerfile.user: the image does not end as a non-root user")
    return problems


# --- both variants pass `docker-compose config` and every rule ---------------------

@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(VARIANTS, pool.map(compose_config, VARIANTS.values())))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_passes_compose_config_and_every_rule(configs, variant):
    assert compose_violations(configs[variant], variant) == []


def test_cpu_variant_differs_only_in_the_gpu(configs):
    """The CPU file is the GPU file without the reservation: nothing else may drift."""
    gpu, cpu = copy.deepcopy(configs["gpu"]), copy.deepcopy(configs["cpu"])
    for name in ("web", "worker"):  # the processes that run the model
        assert _devices(gpu["services"][name]) and not _devices(cpu["services"][name])
        del gpu["services"][name]["deploy"]["resources"]["reservations"]
        gpu["services"][name]["environment"]["EMBED_DEVICE"] = "cpu"
    assert gpu == cpu


@pytest.mark.parametrize("variable", sorted(COMPOSE_ENV))
def test_compose_refuses_a_missing_production_variable(variable):
    """Compose itself stops before anything starts, naming the variable."""
    result = run_compose_config(VARIANTS["gpu"], {k: v for k, v in COMPOSE_ENV.items() if k != variable})
    assert result.returncode != 0 and f"set {variable} in .env" in result.stderr


def test_image_tag_is_the_project_version(configs):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for variant in VARIANTS:
        for name in PORTAL_SERVICES:
            assert configs[variant]["services"][name]["image"] == f"sealed-search-portal:{version}"


def test_dockerfile_rules():
    assert dockerfile_violations(DOCKERFILE.read_text()) == []


def test_entrypoint_writes_the_password_file_and_keeps_the_password_out_of_the_environment(configs, tmp_path):
    """The inline entrypoint (run here with sh) turns the db_password secret
    into a 0600 libpq password file and runs the command without it."""
    entrypoint = configs["gpu"]["services"]["web"]["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    script = entrypoint[2].replace("$$", "$")  # compose's escape, as printed by `config`
    password = "pa:ss\\wo" + secrets.token_hex(8)
    (tmp_path / "db_password").write_text(password + "\n")
    env = {"PATH": os.environ["PATH"], "PORTAL_DB_PASSWORD_FILE": str(tmp_path / "db_password"),
           "PGPASSFILE": str(tmp_path / "pgpass")}
    result = subprocess.run(["/bin/sh", "-c", script, entrypoint[3], "env"], env=env,
                            capture_output=True, text=True, check=True)
    assert password not in result.stdout and "PORTAL_DB_PASSWORD_FILE" not in result.stdout
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    assert (tmp_path / "pgpass").read_text() == f"*:*:*:*:{escaped}\n"
    assert stat.S_IMODE((tmp_path / "pgpass").stat().st_mode) == 0o600


def test_settings_accept_the_compose_environment(configs, tmp_path):
    """web's environment, with the container's paths mapped to temporary
    files, passes `check --deploy --fail-level WARNING`: compose sets every
    variable the production settings require, and nothing they refuse."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    env = dict(configs["gpu"]["services"]["web"]["environment"])
    files = {"embed_model_key": secrets.token_hex(32), "audit_hmac_key": secrets.token_hex(32),
             "db_password": secrets.token_hex(16),
             "audit_signing_key": Ed25519PrivateKey.generate().private_bytes(
                 serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                 serialization.NoEncryption()).decode()}
    (tmp_path / "secrets").mkdir()
    for name, text in files.items():
        (tmp_path / "secrets" / name).write_text(text)
    mapping = {"/run/secrets": tmp_path / "secrets", "/app/config": ROOT / "config", "/app/model": ROOT / "model",
               "/var/lib/sealed-search": tmp_path / "data", "/var/log/sealed-search/audit": tmp_path / "mirror",
               "/tmp": tmp_path / "tmp"}
    for key, value in env.items():
        for inside, outside in mapping.items():
            if value.startswith(inside + "/"):
                env[key] = str(outside) + value[len(inside):]
    env.pop("PORTAL_DB_PASSWORD_FILE")
    env["PATH"] = os.environ["PATH"]
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for text in files.values():
        assert text.strip() not in result.stdout + result.stderr


# --- removing any rule fails -------------------------------------------------------

def _web(c):
    return c["services"]["web"]


def _drop_mount(service, target):
    service["volumes"] = [v for v in service["volumes"] if (v["target"] if isinstance(v, dict) else v.split(":")[1]) != target]


def _set_env(service, **values):
    for key, value in values.items():
        if value is None:
            service["environment"].pop(key, None)
        else:
            service["environment"][key] = value


def _model_rw(c):
    for v in _web(c)["volumes"]:
        if isinstance(v, dict) and v["target"] == "/app/model":
            v["read_only"] = False


def _add_gpu(c):
    _web(c)["deploy"]["resources"]["reservations"] = {
        "devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}


# (rule the checker must name, variant, mutation of the parsed file)
MUTATIONS = {
    "db-tag-floating": ("db.image", "gpu", lambda c: c["services"]["db"].update(image="pgvector/pgvector:pg17")),
    "db-not-pgvector": ("db.image", "gpu", lambda c: c["services"]["db"].update(image="postgres:17.2")),
    "db-no-volume": ("db.volume", "gpu", lambda c: c["services"]["db"].pop("volumes")),
    "db-no-healthcheck": ("db.healthcheck", "gpu", lambda c: c["services"]["db"].pop("healthcheck")),
    "db-plain-password": ("db.password", "gpu", lambda c: _set_env(
        c["services"]["db"], POSTGRES_PASSWORD="secret", POSTGRES_PASSWORD_FILE=None)),
    "web-no-build": ("web.build", "gpu", lambda c: _web(c).pop("build")),
    "web-no-user": ("web.user", "gpu", lambda c: _web(c).pop("user")),
    "web-root-user": ("web.user", "gpu", lambda c: _web(c).update(user="0:0")),
    "web-no-migrate-wait": ("web.migrate_once", "gpu", lambda c: _web(c)["depends_on"].pop("migrate")),
    "web-migrate-only-started": ("web.migrate_once", "gpu", lambda c: _web(c)["depends_on"]["migrate"].update(
        condition="service_started")),
    "migrate-restarts": ("web.migrate_once", "gpu", lambda c: c["services"]["migrate"].update(restart="always")),
    "web-no-healthcheck": ("web.readyz", "gpu", lambda c: _web(c).pop("healthcheck")),
    "model-writable": ("web.model_ro", "gpu", _model_rw),
    "model-not-mounted": ("web.model_ro", "gpu", lambda c: _drop_mount(_web(c), "/app/model")),
    "web-no-secrets": ("web.secrets", "gpu", lambda c: _web(c).pop("secrets")),
    "model-key-plain": ("web.secrets", "gpu", lambda c: _set_env(
        _web(c), EMBED_MODEL_KEY="00" * 32, EMBED_MODEL_KEY_FILE=None)),
    "audit-key-plain": ("web.secrets", "gpu", lambda c: _set_env(
        _web(c), AUDIT_HMAC_KEY="11" * 32, AUDIT_HMAC_KEY_FILE=None)),
    "signing-key-missing": ("web.secrets", "gpu", lambda c: _set_env(_web(c), AUDIT_SIGNING_KEY_FILE=None)),
    "django-secret-plain": ("web.secrets", "gpu", lambda c: _set_env(_web(c), DJANGO_SECRET_KEY="x" * 50)),
    "password-in-url": ("web.secrets", "gpu", lambda c: _set_env(
        _web(c), DATABASE_URL="postgres://portal:secret@db:5432/portal")),
    "url-not-db": ("web.env.DATABASE_URL", "gpu", lambda c: _set_env(_web(c), DATABASE_URL="sqlite:////tmp/x")),
    "mirror-unset": ("web.audit_mirror", "gpu", lambda c: _set_env(_web(c), AUDIT_JSONL_PATH=None)),
    "mirror-volume-dropped": ("web.audit_mirror", "gpu", lambda c: _drop_mount(_web(c), "/var/log/sealed-search/audit")),
    "web-new-privileges": ("web.no_new_privileges", "gpu", lambda c: _web(c).pop("security_opt")),
    "web-capabilities": ("web.cap_drop", "gpu", lambda c: _web(c).pop("cap_drop")),
    "web-root-writable": ("web.read_only", "gpu", lambda c: _web(c).pop("read_only")),
    "web-no-tmpfs": ("web.tmpfs", "gpu", lambda c: _web(c).pop("tmpfs")),
    "web-no-restart": ("web.restart", "gpu", lambda c: _web(c).pop("restart")),
    "web-no-limits": ("web.limits", "gpu", lambda c: _web(c)["deploy"]["resources"].pop("limits")),
    "cache-on-root": ("web.writable", "gpu", lambda c: _set_env(_web(c), PORTAL_CACHE_DIR=None)),
    "gpu-reservation-dropped": ("web.gpu", "gpu", lambda c: _web(c)["deploy"]["resources"].pop("reservations")),
    "gpu-device-cpu": ("web.gpu", "gpu", lambda c: _set_env(_web(c), EMBED_DEVICE="cpu")),
    "cpu-reserves-gpu": ("web.cpu", "cpu", _add_gpu),
    "cpu-device-cuda": ("web.cpu", "cpu", lambda c: _set_env(_web(c), EMBED_DEVICE="cuda")),
    "debug-on": ("web.env.DJANGO_DEBUG", "gpu", lambda c: _set_env(_web(c), DJANGO_DEBUG="true")),
    "migrate-new-privileges": ("migrate.no_new_privileges", "gpu",
                               lambda c: c["services"]["migrate"].pop("security_opt")),
    "migrate-key-plain": ("migrate.secrets", "cpu", lambda c: _set_env(
        c["services"]["migrate"], EMBED_MODEL_KEY="00" * 32, EMBED_MODEL_KEY_FILE=None)),
    **{f"{v.lower().replace('_', '-')}-unset": (f"web.env.{v}", "gpu", lambda c, v=v: _set_env(_web(c), **{v: None}))
       for v in ("DJANGO_ALLOWED_HOSTS", "DJANGO_CSRF_TRUSTED_ORIGINS", "DJANGO_HSTS_SECONDS",
                 "DJANGO_SECURE_COOKIES", "TRUSTED_PROXIES", "AUDIT_POLICY_FILE")},
}


@pytest.fixture(scope="module")
def mutated_results(tmp_path_factory) -> dict[str, tuple[dict | None, str]]:
    """Every mutant written to a temporary compose file and run through
    `docker-compose config` (two at a time): {mutation: (config, stderr)}."""
    folder = tmp_path_factory.mktemp("compose-mutants")
    sources = {variant: yaml.safe_load(path.read_text()) for variant, path in VARIANTS.items()}

    def run(item):
        name, (_rule, variant, mutate) = item
        data = copy.deepcopy(sources[variant])
        data = {k: v for k, v in data.items() if not k.startswith("x-")}  # anchors already expanded
        mutate(data)
        path = folder / f"{name}.yml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        result = run_compose_config(path)
        return name, (yaml.safe_load(result.stdout) if result.returncode == 0 else None, result.stderr)

    _compose_exe()
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, MUTATIONS.items()))


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_removing_a_rule_fails_the_check(mutated_results, mutation):
    rule, variant, _mutate = MUTATIONS[mutation]
    config, stderr = mutated_results[mutation]
    assert config is not None, f"the mutant is not a valid compose file:\n{stderr}"
    rules = {problem.split(":")[0] for problem in compose_violations(config, variant)}
    assert rule in rules, f"the checker did not report {rule} (reported: {sorted(rules)})"


DOCKERFILE_MUTATIONS = {
    "index-allowed": ("dockerfile.offline", lambda t: t.replace("--no-index ", "")),
    "extra-install": ("dockerfile.offline", lambda t: t.replace(
        " && /opt/venv/bin/pip check", " && /opt/venv/bin/pip install requests && /opt/venv/bin/pip check")),
    "syntax-line": ("dockerfile.offline", lambda t: "# syntax=docker/dockerfile:1\n" + t),
    "apt-get": ("dockerfile.offline", lambda t: t.replace("USER 10001", "RUN apt-get update\nUSER 10001")),
    "no-wheelhouse": ("dockerfile.wheelhouse", lambda t: re.sub(r"(?m)^COPY wheelhouse/.*\n", "", t)),
    "no-user": ("dockerfile.user", lambda t: re.sub(r"(?m)^USER .*\n", "", t)),
    "root-user": ("dockerfile.user", lambda t: re.sub(r"(?m)^USER .*$", "USER root", t)),
}


@pytest.mark.parametrize("mutation", sorted(DOCKERFILE_MUTATIONS))
def test_removing_a_dockerfile_rule_fails_the_check(mutation):
    rule, mutate = DOCKERFILE_MUTATIONS[mutation]
    text = DOCKERFILE.read_text()
    changed = mutate(text)
    assert changed != text, "the mutation no longer applies to the Dockerfile"
    rules = {problem.split(":")[0] for problem in dockerfile_violations(changed)}
    assert rule in rules
