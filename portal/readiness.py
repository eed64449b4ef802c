"""Readiness checks and per-worker startup hooks that other apps register.

Keeps `portal` free of imports of `search`: the search app registers how to
open its model and how to tell whether it is open.
"""
from typing import Callable

_checks: dict[str, Callable[[], tuple[bool, str]]] = {}
_startup: list[Callable[[], None]] = []


def register_check(name: str, check: Callable[[], tuple[bool, str]]) -> None:
    _checks[name] = check


def register_worker_startup(hook: Callable[[], None]) -> None:
    if hook not in _startup:
        _startup.append(hook)


def run_worker_startup() -> None:
    for hook in _startup:
        hook()


def readiness() -> dict[str, tuple[bool, str]]:
    results = {}
    for name, check in _checks.items():
        try:
            results[name] = check()
        except Exception as exc:  # a broken check means not ready, never a 500
            results[name] = (False, f"check failed: {exc.__class__.__name__}")
    return results
