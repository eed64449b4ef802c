"""Turning an uploaded file into entries: text (one entry a line), CSV or JSONL."""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass

from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

FORMATS = ("txt", "csv", "jsonl")
# What no imported text may hold, from a file or from the API.
REFUSED_CHARACTERS = re.compile("\x00")


class ImportFileError(ValueError):
    """The file cannot be imported; the message says where and why, in the
    request's language. Its audit record keeps ``code`` and the English
    ``reason``."""

    code = "malformed_file"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or str(message)


def _malformed(template: str, params: dict | None = None) -> ImportFileError:
    params = params or {}
    return ImportFileError(_(template) % params, reason=template % params)


@dataclass(frozen=True)
class Entry:
    line: int
    text: str


def detect_format(filename: str) -> str:
    name = filename.lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".txt", "txt"), (".text", "txt")):
        if name.endswith(ext):
            return fmt
    raise _malformed(gettext_noop("unsupported file type %(name)s: use .txt (one entry a line), .csv or .jsonl"),
                     {"name": repr(filename)})


def decode_utf8(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _malformed(gettext_noop("the file is not UTF-8 text (invalid byte at line %(line)d); "
                                      "save it as UTF-8 and try again"), {"line": line}) from None
    if REFUSED_CHARACTERS.search(text):
        raise _malformed(gettext_noop("the file contains NUL bytes: it looks binary, not text"))
    return text


def parse_entries(data: bytes, fmt: str, *, max_entries: int, max_chars: int) -> list[Entry]:
    text = decode_utf8(data)
    if fmt == "txt":
        entries = [Entry(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif fmt == "csv":
        entries = _csv_entries(text)
    elif fmt == "jsonl":
        entries = _jsonl_entries(text)
    else:
        raise ImportFileError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not entries:
        raise _malformed(gettext_noop("the file holds no entries"))
    if len(entries) > max_entries:
        raise _malformed(gettext_noop("the file holds %(count)d entries; the limit is %(limit)d per import"),
                         {"count": len(entries), "limit": max_entries})
    for entry in entries:
        if len(entry.text) > max_chars:
            raise _malformed(gettext_noop("entry at line %(line)d is %(chars)d characters; the limit is %(limit)d"),
                             {"line": entry.line, "chars": len(entry.text), "limit": max_chars})
    return entries


def _csv_entries(text: str) -> list[Entry]:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise _malformed(gettext_noop("the CSV file is malformed: %(error)s"), {"error": exc}) from None
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    if "text" in header:
        column, start = header.index("text"), 1
    elif max(len(row) for row in rows) == 1:
        column, start = 0, 0  # one column and no header: every row is an entry
    else:
        found = ", ".join(repr(h) for h in rows[0][:8])
        raise _malformed(gettext_noop('the CSV file has several columns but none is headed "text" (found %(found)s); '
                                      'name the column to import "text" in the first row'), {"found": found})
    entries = []
    for n, row in enumerate(rows[start:], start + 1):
        if len(row) > column and row[column].strip():
            entries.append(Entry(n, row[column].strip()))
    return entries


def _jsonl_entries(text: str) -> list[Entry]:
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _malformed(gettext_noop("line %(line)d is not valid JSON (%(error)s)"),
                             {"line": n, "error": exc.msg}) from None
        except RecursionError:
            raise _malformed(gettext_noop("line %(line)d is JSON nested too deeply to read"), {"line": n}) from None
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str) or not value.strip():
            raise _malformed(gettext_noop('line %(line)d must be a string or an object with a non-empty "text" '
                                          'string'), {"line": n})
        if value != value.encode("utf-8", "replace").decode("utf-8"):
            raise _malformed(gettext_noop("line %(line)d holds a lone UTF-16 surrogate (such as \\ud800), "
                                          "which is not Unicode text"), {"line": n})
        entries.append(Entry(n, value.strip()))
    return entries
