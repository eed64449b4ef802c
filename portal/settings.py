"""Settings for the portal. Everything configurable comes from the environment
(django-environ; a `.env` file beside manage.py is read if present).

Secret keys are *not* settings: `keystore.keys.install_keyring()` reads them
once, removes them from os.environ, and keeps them out of `diffsettings`.
"""
from datetime import timedelta
from pathlib import Path

import environ

from keystore.keys import derive_subkey, handed_over, install_keyring

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# PORTAL_DOTENV names the file to read (empty: none; `make test` reads none).
_dotenv = env.str("PORTAL_DOTENV", default=".env")
if _dotenv and (BASE_DIR / _dotenv).is_file():
    environ.Env.read_env(BASE_DIR / _dotenv, overwrite=False)

# Read before anything else can log the environment; errors are reported by
# the system checks in portal/checks.py, which stop startup.
_signing_file = env.str("AUDIT_SIGNING_KEY_FILE", default="")
if _signing_file and not Path(_signing_file).is_absolute():
    env.ENVIRON["AUDIT_SIGNING_KEY_FILE"] = str(BASE_DIR / _signing_file)
_KEYRING = install_keyring()

# A malformed number is reported by the system checks (portal/checks.py),
# naming the variable, instead of stopping the import with a traceback.
SETTINGS_ERRORS: list[str] = []


def _env_int(name: str, default: int, low: int | None = None, high: int | None = None) -> int:
    """A whole number from the environment; outside ``low``..``high`` (when
    given) it is a settings error that stops startup, naming the range."""
    try:
        value = env.int(name, default=default)
    except ValueError:
        SETTINGS_ERRORS.append(f"{name} must be a whole number")
        return default
    if (low is not None and value < low) or (high is not None and value > high):
        SETTINGS_ERRORS.append(f"{name} must be from {low} to {high}, not {value}")
        return default
    return value


# Production is the default and strict (SPEC §10, docs/decisions.md); only
# PORTAL_MODE=development (written into .env by portal/devenv.py for `make run`,
# set by pytest-env for the test suite) relaxes it to plain HTTP on loopback.
PORTAL_MODE = env.str("PORTAL_MODE", default="production")
if PORTAL_MODE not in ("production", "development"):
    SETTINGS_ERRORS.append("PORTAL_MODE must be 'production' or 'development'")
    PORTAL_MODE = "production"
PRODUCTION = PORTAL_MODE == "production"
DEBUG = env.bool("DJANGO_DEBUG", default=False)
if DEBUG and PRODUCTION:
    SETTINGS_ERRORS.append("DJANGO_DEBUG must be off in production (PORTAL_MODE=development for a developer's machine)")
_secret = env.str("DJANGO_SECRET_KEY", default="") or handed_over("DJANGO_SECRET_KEY") or ""
env.ENVIRON.pop("DJANGO_SECRET_KEY", None)
if not _secret and _KEYRING.audit_key:
    # Stable across workers and restarts without a separate variable.
    _secret = derive_subkey(_KEYRING.audit_key, "django-secret-key").hex()
SECRET_KEY = _secret or "unconfigured-" + "x" * 40
del _secret

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[] if PRODUCTION else ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "portal.apps.PortalAdminConfig",  # django.contrib.admin with the portal's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "django_tasks",
    "django_tasks_db",
    "portal",
    "audit",
    "search",
]

MIDDLEWARE = [
    "portal.monitoring.MetricsMiddleware",  # request latency per route (/metrics)
    "portal.production.ForwardedProtoMiddleware",  # X-Forwarded-Proto only from TRUSTED_PROXIES
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "portal.middleware.RequestContextMiddleware",
    # A database that cannot be written answers 503 (portal/storage.py).
    "portal.storage.StorageFaultMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.middleware.TenantMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.tenant",
            ],
        },
    },
]

(BASE_DIR / "var").mkdir(exist_ok=True)
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'portal.sqlite3'}")}
# How long a write waits for SQLite's write lock before it fails (and the
# request answers 503): long enough for a queue of audit appends, short enough
# that a database held locked is a quick refusal, not a 30-second hang.
DB_BUSY_TIMEOUT_MS = _env_int("DB_BUSY_TIMEOUT_MS", 5000)
# Every SQLite commit waits for the disk; an audit append that need not
# (record_event(durable=False)) lowers it for its own commit and restores this.
SQLITE_SYNCHRONOUS = "FULL"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take the write lock up front, so concurrent audit
    # appends queue on the busy timeout instead of failing with "locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": DB_BUSY_TIMEOUT_MS / 1000,
        "init_command": (f"PRAGMA journal_mode=WAL; PRAGMA synchronous={SQLITE_SYNCHRONOUS}; "
                         f"PRAGMA busy_timeout={DB_BUSY_TIMEOUT_MS}"),
    }
    # A file, not shared-cache memory, so tests see real locking and WAL.
    # PORTAL_TEST_DB separates two test runs in one checkout.
    DATABASES["default"]["TEST"] = {"NAME": env.str("PORTAL_TEST_DB", default=str(BASE_DIR / "var" / "test-portal.sqlite3"))}
# Keep connections across requests: reopening one (and re-running the PRAGMAs)
# cost more than the whole query work of a search.
DATABASES["default"]["CONN_MAX_AGE"] = _env_int("DB_CONN_MAX_AGE", 600)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    "default": {
        # Shared by every gunicorn worker: throttles must count across them.
        "BACKEND": "portal.cache.SQLiteCache",
        "LOCATION": str(Path(env.str("PORTAL_CACHE_DIR", default=str(BASE_DIR / "var" / "cache"))) / "cache.sqlite3"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True  # no script reads it: forms carry the token, the API uses bearer tokens
CSRF_COOKIE_SAMESITE = "Lax"
try:
    SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=PRODUCTION)
except ValueError:
    SETTINGS_ERRORS.append("DJANGO_SECURE_COOKIES must be true or false")
    SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# --- production: behind the customer's TLS proxy (portal/production.py) -------
from portal.production import production_settings  # noqa: E402

globals().update(production_settings(env, PRODUCTION, SETTINGS_ERRORS))
# /metrics: under gunicorn each worker writes its metrics into files there
# (portal/metrics_gunicorn.py); it must exist before prometheus_client loads.
if env.str("PROMETHEUS_MULTIPROC_DIR", default=""):
    try:
        Path(env.str("PROMETHEUS_MULTIPROC_DIR")).mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        SETTINGS_ERRORS.append("PROMETHEUS_MULTIPROC_DIR must be a folder the portal can create and write")
        env.ENVIRON.pop("PROMETHEUS_MULTIPROC_DIR")
# (end of production block)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Everything comes from this server; no script but the files under /static/
# (no inline script, no eval). Inline style attributes are allowed (score
# bars, the admin's own markup); data: images serve the API docs' icons.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

# Lockout after repeated failed logins (django-axes).
AXES_FAILURE_LIMIT = _env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
# Files served at the site root (the browser asks for /favicon.ico on every page, the admin's too).
WHITENOISE_ROOT = BASE_DIR / "portal" / "root"
DATA_UPLOAD_MAX_MEMORY_SIZE = _env_int("PORTAL_MAX_BODY_BYTES", 10 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.api_auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["portal.parsers.StrictJSONParser"],
    "EXCEPTION_HANDLER": "portal.api_errors.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "portal.openapi.PortalAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sealed semantic search portal API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs page's assets come from this machine, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- product settings (SPEC §3) ---------------------------------------------
EMBED_MODEL_PATH = env.str("EMBED_MODEL_PATH", default=str(BASE_DIR / "model" / "demo-minilm.q3e.enc"))
EMBED_DEVICE = env.str("EMBED_DEVICE", default="auto")
# What runs the encoder: auto (ONNX Runtime on the CPU when the bundle holds the
# ONNX graph model_seal exports, else torch), torch, or onnx (an error at
# startup when the bundle has no graph or the device is a GPU).
EMBED_BACKEND = env.str("EMBED_BACKEND", default="auto").strip().lower()
if EMBED_BACKEND not in ("auto", "torch", "onnx"):
    SETTINGS_ERRORS.append("EMBED_BACKEND must be auto, torch or onnx")
# The audit policy a customer signs off (audit/ledger/policy.py): the file, which the
# environment may only make stricter. It sets AUDIT_RETENTION_DAYS,
# AUDIT_QUERY_MODE, AUDIT_CHECKPOINT_EVERY_* and AUDIT_JSONL_PATH.
from audit.ledger.policy import load_policy  # noqa: E402

AUDIT_POLICY_FILE = Path(env.str("AUDIT_POLICY_FILE", default="config/audit-policy.json"))
if not AUDIT_POLICY_FILE.is_absolute():
    AUDIT_POLICY_FILE = BASE_DIR / AUDIT_POLICY_FILE
_policy = load_policy(AUDIT_POLICY_FILE, env.ENVIRON, SETTINGS_ERRORS)
AUDIT_QUERY_MODE = _policy.query_mode
AUDIT_RETENTION_DAYS = _policy.retention_days
AUDIT_JSONL_PATH = _policy.mirror_path or None
AUDIT_SIGNING_KEY_CONFIGURED = _KEYRING.signing_key_pem is not None
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
API_TOKEN_DEFAULT_DAYS = _env_int("API_TOKEN_DEFAULT_DAYS", 90)
del _KEYRING

# --- audit review, checkpoints, exports, retention, SIEM mirror ---------------
# The tenant model the audit ledger's events and checkpoints point to, named
# here as AUTH_USER_MODEL names the user model: audit/ledger imports nothing
# from portal (SPEC §2).
AUDIT_TENANT_MODEL = "portal.Tenant"
# A signed checkpoint of a chain every N events (seq % N == 0), and at the next
# append once a worker has written none for M minutes (0 turns either off).
# Set by the audit policy (config/audit-policy.json, AUDIT_POLICY_FILE).
AUDIT_CHECKPOINT_EVERY_EVENTS = _policy.checkpoint_every_events
AUDIT_CHECKPOINT_EVERY_MINUTES = _policy.checkpoint_every_minutes
del _policy
# Where audit_archive writes its signed archives before removing events.
AUDIT_ARCHIVE_DIR = env.str("AUDIT_ARCHIVE_DIR", default=str(BASE_DIR / "var" / "audit-archive"))
# Longest lifetime of a presigned export URL.
AUDIT_PRESIGN_MAX_SECONDS = _env_int("AUDIT_PRESIGN_MAX_SECONDS", 24 * 3600)
# The admin's change list counts at most this far ahead instead of the whole table.
AUDIT_ADMIN_COUNT_AHEAD_PAGES = 10
# Range exports as background jobs (audit/review/exports.py): a range of more
# events than AUDIT_EXPORT_SYNC_MAX_EVENTS asked for through GET
# /api/v1/audit/export is queued (202 + Location) instead of written in the
# request. Finished bundles wait in AUDIT_EXPORT_DIR (shared by web and
# worker) for AUDIT_EXPORT_KEEP_HOURS, then are removed.
AUDIT_EXPORT_SYNC_MAX_EVENTS = _env_int("AUDIT_EXPORT_SYNC_MAX_EVENTS", 100_000)
AUDIT_EXPORT_DIR = env.str("AUDIT_EXPORT_DIR", default=str(BASE_DIR / "var" / "audit-exports"))
AUDIT_EXPORT_KEEP_HOURS = _env_int("AUDIT_EXPORT_KEEP_HOURS", 24)
# A running export whose worker has not reported for this long is taken as lost.
EXPORT_JOB_STALE_SECONDS = _env_int("EXPORT_JOB_STALE_SECONDS", 900)
# (end of audit block)

# --- search: knowledge bases, limits, throttles ------------------------------
SEARCH_MAX_QUERY_CHARS = _env_int("SEARCH_MAX_QUERY_CHARS", 2000)
SEARCH_MAX_TOP_K = _env_int("SEARCH_MAX_TOP_K", 50)
# Relevance floor (cosine, 0..1) for a model sealed without a calibrated one
# (model_seal --relevance-floor) and a knowledge base without its own: hits
# under it are weak matches. Empty: no floor, every hit is a match.
try:
    SEARCH_DEFAULT_MIN_SCORE = env.float("SEARCH_DEFAULT_MIN_SCORE", default=None)
    if SEARCH_DEFAULT_MIN_SCORE is not None and not 0.0 <= SEARCH_DEFAULT_MIN_SCORE <= 1.0:
        raise ValueError
except ValueError:
    SETTINGS_ERRORS.append("SEARCH_DEFAULT_MIN_SCORE must be a number from 0 to 1")
    SEARCH_DEFAULT_MIN_SCORE = None
RADAR_MAX_LINES = _env_int("RADAR_MAX_LINES", 2000)
KB_MAX_UPLOAD_BYTES = _env_int("KB_MAX_UPLOAD_BYTES", 8 * 1024 * 1024)
KB_MAX_IMPORT_ENTRIES = _env_int("KB_MAX_IMPORT_ENTRIES", 200_000)
KB_MAX_DOCUMENT_CHARS = _env_int("KB_MAX_DOCUMENT_CHARS", 8000)
KB_IMPORT_BATCH = _env_int("KB_IMPORT_BATCH", 64)
# PostgreSQL: entries embedded and written (COPY) per step of an import; what
# an import holds in memory besides the file (search.services.documents_import).
KB_IMPORT_STORE_BATCH = _env_int("KB_IMPORT_STORE_BATCH", 1000)
# File imports run as tasks (search/tasks.py) in `manage.py db_worker`, queued
# in the database (django-tasks, the API Django 6 ships as django.tasks).
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
# Torch threads of the task worker: imports leave the other cores to searches.
TASK_WORKER_TORCH_THREADS = _env_int("TASK_WORKER_TORCH_THREADS", 1)
# A running import whose worker has not reported for this long is taken as
# lost (the worker was killed; its transaction never committed): it is marked
# failed and audited, so the page stops waiting for it.
IMPORT_JOB_STALE_SECONDS = _env_int("IMPORT_JOB_STALE_SECONDS", 900)
# PostgreSQL (pgvector): a knowledge base of at most this many documents is
# searched exactly; a larger one through the HNSW index, which reads about
# SEARCH_HNSW_EF_SEARCH candidates per search (bench/vector_search.py).
SEARCH_EXACT_MAX_ROWS = _env_int("SEARCH_EXACT_MAX_ROWS", 10_000)
SEARCH_HNSW_EF_SEARCH = _env_int("SEARCH_HNSW_EF_SEARCH", 100, 1, 1000)
# The HNSW graph's links per node and build-time candidate list, read when an
# index is built (a change applies to indexes built after it). The ranges are
# pgvector's: outside them it refuses to build the index, so the portal
# refuses to start instead, naming the variable.
SEARCH_HNSW_M = _env_int("SEARCH_HNSW_M", 32, 2, 100)
SEARCH_HNSW_EF_CONSTRUCTION = _env_int("SEARCH_HNSW_EF_CONSTRUCTION", 128, 4, 1000)
if SEARCH_HNSW_EF_CONSTRUCTION < 2 * SEARCH_HNSW_M:
    SETTINGS_ERRORS.append(f"SEARCH_HNSW_EF_CONSTRUCTION ({SEARCH_HNSW_EF_CONSTRUCTION}) must be at least twice "
                           f"SEARCH_HNSW_M ({SEARCH_HNSW_M}), as pgvector requires")
EMBEDDINGS_MAX_INPUTS = _env_int("EMBEDDINGS_MAX_INPUTS", 256)
# Per token (API) and per user (session); counted in the shared cache.
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = ["search.throttles.TokenOrUserRateThrottle"]
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"token_or_user": env.str("API_THROTTLE_RATE", default="1200/min")}
# Uploads may be larger than ordinary request bodies.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(DATA_UPLOAD_MAX_MEMORY_SIZE, KB_MAX_UPLOAD_BYTES + 1024 * 1024)
# (end of search block)

# Production: one JSON object a line on stdout, no query strings, no keys
# (portal/logs.py); development: plain lines on stderr. LOG_FORMAT overrides.
LOG_FORMAT = env.str("LOG_FORMAT", default="").strip() or ("json" if PRODUCTION else "plain")
if LOG_FORMAT not in ("json", "plain"):
    SETTINGS_ERRORS.append("LOG_FORMAT must be 'json' or 'plain'")
    LOG_FORMAT = "json"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
                   "json": {"()": "portal.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                             **({"stream": "ext://sys.stdout"} if LOG_FORMAT == "json" else {})}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}
