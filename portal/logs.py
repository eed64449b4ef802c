"""Logs as one JSON object a line on stdout (production), for the customer's
log collector. Django-free: gunicorn's master uses it too (portal/gunicorn.conf.py).

Never in a line: a query string (a presigned export URL carries its signature
there, a GET search its question), a key (the keyring's values in any of the
forms they are given in), a database password. The formatter writes only
named fields, never a record's arbitrary extras (a Django request's repr
holds the full path with its query string).
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Mapping

_QUERY = re.compile(r"(/[^\s?#\"'<>]*)\?[^\s\"'<>#]*")
_URL_PASSWORD = re.compile(r"(://[^\s:/@]+:)[^\s@/]+@")
# gunicorn access-log atoms that are safe: no query string (q, r), no referer (f).
_ACCESS_FIELDS = {"h": "remote", "m": "method", "U": "path", "s": "status", "B": "bytes", "M": "duration_ms"}


def _key_forms() -> list[str]:
    # Only a keyring already installed: logging must never read keys itself
    # (in gunicorn's master that would take them out of the hand-over).
    ring = getattr(sys.modules.get("keystore.keys"), "_keyring", None)
    if ring is None:
        return []
    forms = []
    for key in filter(None, [ring.model_key, ring.audit_key, *ring.audit_old_keys]):
        forms += [key.hex(), key.hex().upper(), base64.b64encode(key).decode()]
    return forms


def scrub(text: str) -> str:
    text = _QUERY.sub(r"\1?[query removed]", text)
    text = _URL_PASSWORD.sub(r"\1[password removed]@", text)
    for form in _key_forms():
        if form in text:
            text = text.replace(form, "[key removed]")
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            for atom, name in _ACCESS_FIELDS.items():
                try:
                    entry[name] = record.args[atom]
                except (KeyError, TypeError):
                    pass
            entry["message"] = scrub(f"{entry.get('method', '-')} {entry.get('path', '-')} {entry.get('status', '-')}")
        else:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001  a bad format string still makes a line
                message = str(record.msg)
            entry["message"] = scrub(message)
        status = getattr(record, "status_code", None)
        if isinstance(status, int):
            entry["status"] = status
        request = getattr(record, "request", None)
        if request is not None:
            path = getattr(request, "path", None)  # never get_full_path(): no query string
            if isinstance(path, str):
                entry["path"] = scrub(path)
            request_id = getattr(request, "request_id", None)
            if isinstance(request_id, str):
                entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_format(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> str:
    """`json` or `plain`: LOG_FORMAT if set, else json in production and plain
    in development (PORTAL_MODE), looking in the environment, then in .env."""
    environ = os.environ if environ is None else environ
    values = dict(_read_dotenv(dotenv)) if dotenv else {}
    values.update({k: v for k, v in environ.items() if k in ("LOG_FORMAT", "PORTAL_MODE")})
    chosen = values.get("LOG_FORMAT", "").strip().lower()
    if chosen in ("json", "plain"):
        return chosen
    return "plain" if values.get("PORTAL_MODE", "").strip() == "development" else "json"


def _read_dotenv(path: Path):
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    for line in lines:
        name, sep, value = line.strip().partition("=")
        if sep and name in ("LOG_FORMAT", "PORTAL_MODE"):
            yield name, value.strip().strip("'\"")


def gunicorn_logconfig(root: Path) -> dict:
    """gunicorn's `logconfig_dict`: JSON lines on stdout for the master's and
    the workers' gunicorn logs; empty (gunicorn's own format) in plain mode."""
    dotenv = os.environ.get("PORTAL_DOTENV", ".env")
    if log_format(dotenv=root / dotenv if dotenv else None) != "json":
        return {}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "portal.logs.JsonFormatter"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stdout"}},
        "root": {"level": "INFO", "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }
