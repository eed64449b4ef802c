"""The shared cache the API throttles count in, and the throttle itself."""
import multiprocessing
import stat

import pytest

from portal.cache import SQLiteCache
from search.throttles import TokenOrUserRateThrottle


def _count(path, times, how, out):
    cache = SQLiteCache(path, {})
    hit = (lambda: cache.incr("hits")) if how == "incr" else (lambda: cache.count_hit("hits", 60))
    out.put([hit() for _ in range(times)])


@pytest.mark.parametrize("how", ["incr", "count_hit"])
def test_processes_share_the_count_and_lose_no_hit(tmp_path, how):
    path = str(tmp_path / "cache" / "cache.sqlite3")
    if how == "incr":
        assert SQLiteCache(path, {}).add("hits", 0, 60)
    out = multiprocessing.get_context("fork").Queue()
    workers = [multiprocessing.get_context("fork").Process(target=_count, args=(path, 150, how, out))
               for _ in range(4)]
    for w in workers:
        w.start()
    seen = sorted(n for _ in workers for n in out.get(timeout=60))
    for w in workers:
        w.join(timeout=60)
    assert seen == list(range(1, 601))  # every increment counted once, none lost to a race
    assert SQLiteCache(path, {}).get("hits") == 600
    assert stat.S_IMODE((tmp_path / "cache" / "cache.sqlite3").stat().st_mode) == 0o600


def test_cache_semantics(tmp_path, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr("portal.cache.time.time", lambda: clock[0])
    cache = SQLiteCache(str(tmp_path / "c.sqlite3"), {})
    assert cache.get("missing", "default") == "default"
    cache.set("obj", {"a": [1, 2]}, 60)
    assert cache.get("obj") == {"a": [1, 2]}
    assert not cache.add("obj", "other", 60)
    assert cache.add("n", 5, 60) and cache.incr("n", 2) == 7
    with pytest.raises(ValueError):
        cache.incr("absent")
    assert cache.delete("obj") and not cache.has_key("obj")
    cache.set("brief", "x", 10)
    clock[0] += 11
    assert cache.get("brief") is None and cache.add("brief", "y", 10) and cache.get("brief") == "y"
    with pytest.raises(ValueError):
        cache.incr("brief")  # not an integer
    clock[0] += 60
    with pytest.raises(ValueError):
        cache.incr("n")  # expired


def test_count_hit_counts_and_restarts(tmp_path, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr("portal.cache.time.time", lambda: clock[0])
    cache = SQLiteCache(str(tmp_path / "c.sqlite3"), {})
    assert [cache.count_hit("w", 10) for _ in range(3)] == [1, 2, 3]
    clock[0] += 9
    assert cache.count_hit("w", 10) == 4  # the window's own expiry, not pushed back by hits
    clock[0] += 2
    assert cache.count_hit("w", 10) == 1 and cache.get("w") == 1  # expired: a new count
    cache.set("text", "x", 60)
    assert cache.count_hit("text", 60) == 1 and cache.incr("text") == 2  # a non-integer is replaced


@pytest.fixture
def three_a_minute(monkeypatch):
    monkeypatch.setitem(TokenOrUserRateThrottle.THROTTLE_RATES, "token_or_user", "3/min")
    monkeypatch.setattr(TokenOrUserRateThrottle, "timer", lambda self: 1_800_000_030.0)  # mid-window


def test_api_throttle_per_token(three_a_minute, tenants, make_user, make_token, bearer):
    user = make_user("fay", tenants["acme"], "searcher")
    first, second = (bearer(make_token(user, tenants["acme"])[1]) for _ in range(2))
    assert [first.get("/api/v1/me").status_code for _ in range(3)] == [200, 200, 200]
    refused = first.get("/api/v1/me")
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/problem+json"
    assert 0 < int(refused["Retry-After"]) <= 30
    assert second.get("/api/v1/me").status_code == 200  # another token has its own budget


def test_api_throttle_per_user_for_sessions(three_a_minute, tenants, make_user, login):
    client = login(make_user("gus", tenants["acme"], "searcher"))
    assert [client.get("/api/v1/me").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_a_cache_the_throttle_cannot_count_with_stops_startup(settings):
    from portal.checks import check_product_settings

    assert "portal.E007" not in [e.id for e in check_product_settings()]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert "portal.E007" in [e.id for e in check_product_settings()]
