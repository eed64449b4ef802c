"""The audit policy a customer signs off: `AUDIT_POLICY_FILE` (default
config/audit-policy.json), read once at startup by portal/settings.py.

The file sets the retention, the query mode, the checkpoint cadence and the
SIEM mirror path. The environment (AUDIT_RETENTION_DAYS, AUDIT_QUERY_MODE,
AUDIT_CHECKPOINT_EVERY_EVENTS, AUDIT_CHECKPOINT_EVERY_MINUTES,
AUDIT_JSONL_PATH) may only make it stricter; a weaker value is an error that
names the variable and the file, and stops startup (system check portal.E006,
portal/wsgi.py). "Stricter" means:

- retention_days: longer (events are kept at least as long as signed off);
- query_mode: keeps less of the query — full < truncate:N < truncate:M (M < N)
  < hash; the file is the most query text the portal may store;
- checkpoint_every_events / _minutes: more often (a smaller positive number;
  0 is "never", the weakest; a file's 0 lets the environment set any cadence);
- mirror_path: the environment may add a mirror where the file has none
  (null), never remove or move the one the file names.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

FIELDS = {
    "retention_days": "AUDIT_RETENTION_DAYS",
    "query_mode": "AUDIT_QUERY_MODE",
    "checkpoint_every_events": "AUDIT_CHECKPOINT_EVERY_EVENTS",
    "checkpoint_every_minutes": "AUDIT_CHECKPOINT_EVERY_MINUTES",
    "mirror_path": "AUDIT_JSONL_PATH",
}
DEFAULTS = {"retention_days": 365, "query_mode": "full", "checkpoint_every_events": 1000,
            "checkpoint_every_minutes": 60, "mirror_path": None}
_TRUNCATE = re.compile(r"truncate:([1-9][0-9]*)")


@dataclass(frozen=True)
class AuditPolicy:
    retention_days: int
    query_mode: str
    checkpoint_every_events: int
    checkpoint_every_minutes: int
    mirror_path: str | None


def query_privacy(mode: str) -> tuple[int, int] | None:
    """A sortable rank: the larger, the less of the query is kept; None if not a mode."""
    if mode == "full":
        return (0, 0)
    if mode == "hash":
        return (2, 0)
    match = _TRUNCATE.fullmatch(mode)
    return (1, -int(match.group(1))) if match else None


def _cadence_stricter_or_equal(env_value: int, file_value: int) -> bool:
    if file_value == 0:
        return True
    return 0 < env_value <= file_value


def load_policy(path: Path, environ: Mapping[str, str], errors: list[str]) -> AuditPolicy:
    """The policy in force: the file, tightened by the environment. Problems are
    appended to ``errors`` (naming the file, the field and the variable); the
    returned policy then holds the file's (or the defaults') values."""
    where = f"{path} (AUDIT_POLICY_FILE)"
    values = dict(DEFAULTS)
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        errors.append(f"audit policy file {where} does not exist")
        loaded = None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        errors.append(f"audit policy file {where} could not be read as JSON ({exc.__class__.__name__})")
        loaded = None
    if loaded is not None:
        if not isinstance(loaded, dict):
            errors.append(f"audit policy file {where} must hold one JSON object")
        else:
            unknown = sorted(k for k in loaded if k not in FIELDS and not k.startswith("_"))
            missing = sorted(k for k in FIELDS if k not in loaded)
            if unknown:
                errors.append(f"audit policy file {where} has unknown fields: {', '.join(unknown)}")
            if missing:
                errors.append(f"audit policy file {where} lacks fields: {', '.join(missing)}")
            values.update({k: loaded[k] for k in FIELDS if k in loaded})
    _validate_file_values(values, where, errors)

    def given(name: str) -> str | None:
        text = environ.get(name, "")
        return text.strip() if text and text.strip() else None

    weaker = "the environment may only make the audit policy stricter"
    text = given("AUDIT_RETENTION_DAYS")
    if text is not None:
        try:
            days = int(text)
        except ValueError:
            errors.append("AUDIT_RETENTION_DAYS must be a whole number")
        else:
            if days < values["retention_days"]:
                errors.append(f"AUDIT_RETENTION_DAYS={days} is shorter than retention_days "
                              f"{values['retention_days']} in {where}: {weaker} (longer retention)")
            else:
                values["retention_days"] = days
    text = given("AUDIT_QUERY_MODE")
    if text is not None:
        rank = query_privacy(text)
        if rank is None:
            errors.append("AUDIT_QUERY_MODE must be 'full', 'hash' or 'truncate:N' with N > 0")
        elif rank < (query_privacy(values["query_mode"]) or (0, 0)):
            errors.append(f"AUDIT_QUERY_MODE={text} keeps more of the query than query_mode "
                          f"{values['query_mode']!r} in {where}: {weaker} (full < truncate:N < hash)")
        else:
            values["query_mode"] = text
    for field, name in (("checkpoint_every_events", "AUDIT_CHECKPOINT_EVERY_EVENTS"),
                        ("checkpoint_every_minutes", "AUDIT_CHECKPOINT_EVERY_MINUTES")):
        text = given(name)
        if text is None:
            continue
        try:
            every = int(text)
        except ValueError:
            errors.append(f"{name} must be a whole number")
            continue
        if every < 0 or not _cadence_stricter_or_equal(every, values[field]):
            errors.append(f"{name}={every} checkpoints less often than {field} {values[field]} in {where}: "
                          f"{weaker} (a smaller positive number; 0 turns checkpoints off)")
        else:
            values[field] = every
    text = given("AUDIT_JSONL_PATH")
    if text is not None:
        if values["mirror_path"] and text != values["mirror_path"]:
            errors.append(f"AUDIT_JSONL_PATH differs from mirror_path in {where}: {weaker} "
                          "(the mirror the policy names cannot be moved)")
        else:
            values["mirror_path"] = text
    return AuditPolicy(**values)


def _validate_file_values(values: dict, where: str, errors: list[str]) -> None:
    def bad(field: str, what: str, default):
        errors.append(f"{field} in {where} must be {what}")
        values[field] = default

    if not _whole(values["retention_days"]) or values["retention_days"] < 1:
        bad("retention_days", "a whole number of days, at least 1", DEFAULTS["retention_days"])
    if not isinstance(values["query_mode"], str) or query_privacy(values["query_mode"]) is None:
        bad("query_mode", "'full', 'hash' or 'truncate:N' with N > 0", DEFAULTS["query_mode"])
    for field in ("checkpoint_every_events", "checkpoint_every_minutes"):
        if not _whole(values[field]) or values[field] < 0:
            bad(field, "a whole number, 0 or more (0: off)", DEFAULTS[field])
    if values["mirror_path"] is not None and (not isinstance(values["mirror_path"], str)
                                              or not values["mirror_path"].strip()):
        bad("mirror_path", "null or a file path", None)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
