"""The API's JSON parser: DRF's, plus the two inputs that used to end in a 500.

* JSON nested deeper than MAX_DEPTH (a body nested 100,000 levels made the
  decoder raise RecursionError; one nested a few hundred levels passed the
  decoder and broke whatever walked it later, the audit log's encoder included).
* A lone UTF-16 surrogate such as ``"\\ud800"``: valid JSON escape syntax, but no
  Unicode text; it cannot be stored or encoded as UTF-8.

Both are a 400 problem+json whose message names the field."""
from __future__ import annotations

import io
import json
import re

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32

# Strings and brackets of a JSON text: enough to find where it nests too deep
# without recursing (the decoder already failed to).
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def field_name(path: tuple) -> str:
    """A path into a JSON document as a person writes it: ``documents[3].text``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the body)"


class JSONRefused(ParseError):
    """A 400 parse error (so refused bodies are handled as every other parse
    error is) with the problem's extra members."""

    def __init__(self, detail: str, **extra):
        super().__init__(detail)
        self.extra = extra


def _too_deep(field: str, limit: int) -> JSONRefused:
    return JSONRefused(f"{field}: the JSON is nested more than {limit} levels deep",
                       errors={field: [f"nested more than {limit} levels deep"]})


def _not_text(field: str) -> JSONRefused:
    return JSONRefused(f"{field}: the text contains a lone UTF-16 surrogate (such as \\ud800), "
                       "which is not Unicode text", errors={field: ["contains a lone UTF-16 surrogate"]})


def is_unicode_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json(value, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise a 400 (JSONRefused) if ``value`` (decoded JSON) nests deeper than
    ``max_depth`` or holds a string (or key) that is not Unicode text."""
    stack = [((), value, 1)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, str):
            if not is_unicode_text(item):
                raise _not_text(field_name(path))
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise _too_deep(field_name(path[:1]), max_depth)
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and not is_unicode_text(key):
                    raise _not_text(field_name(path + (key.encode("utf-8", "backslashreplace").decode(),)))
                stack.append((path + (key,), child, depth + 1))


def deep_field(text: str, max_depth: int = MAX_DEPTH) -> str:
    """The top-level member of ``text`` (a JSON document) where it first nests
    deeper than ``max_depth``; found by a flat scan, no recursion."""
    depth, key, last_string = 0, None, None
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            if depth == 1:
                last_string = token
            continue
        if token in "[{":
            if depth == 1 and last_string is not None:
                key = last_string
            depth += 1
            if depth > max_depth:
                break
        else:
            depth -= 1
            if depth == 1:
                key = last_string = None
    if key is None:
        return "(the body)"
    try:
        return str(json.loads(key))
    except ValueError:
        return key[1:-1]


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read()
        try:
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:
            text = raw.decode("utf-8", "replace")
            raise _too_deep(deep_field(text), MAX_DEPTH) from None
        check_json(data)
        return data
