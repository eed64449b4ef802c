"""A Django cache in one SQLite file, shared by every gunicorn worker on the
host: the API throttles count in it.

Django's file-based cache lists its whole folder on every write and DRF's
default throttle pickles a list of every recent request's time, which cost a
millisecond a request; here a read or a write is one statement, and ``add``,
``incr`` and ``count_hit`` are atomic across processes, so a fixed-window
counter never loses a hit to a race between workers. Integers are stored as SQL integers
(for ``incr``); other values are pickled, as in Django's own backends. The
file is created mode 0600: only the portal's account reads it. Nothing here
needs to survive a power cut, so commits are not synced to disk.
"""
from __future__ import annotations

import os
import pickle
import sqlite3
import threading
import time
from pathlib import Path

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

_SCHEMA = "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value NOT NULL, expires REAL)"
_LIVE = "(expires IS NULL OR expires > ?)"
_CULL_EVERY = 500  # writes between sweeps of expired rows, per process


class SQLiteCache(BaseCache):
    def __init__(self, location, params):
        super().__init__(params)
        self._path = Path(location)
        self._local = threading.local()
        self._writes = 0

    # --- connection ---------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # first use in this thread, or a forked worker
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
            db = sqlite3.connect(self._path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(_SCHEMA)
            local.db, local.pid = db, os.getpid()
        return local.db

    @staticmethod
    def _dump(value):
        return value if type(value) is int else pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def _load(stored):
        return stored if type(stored) is int else pickle.loads(stored)

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _CULL_EVERY == 0:
            self._db().execute("DELETE FROM cache WHERE expires <= ?", (time.time(),))

    # --- the cache API ------------------------------------------------------
    def get(self, key, default=None, version=None):
        key = self.make_and_validate_key(key, version=version)
        row = self._db().execute(f"SELECT value FROM cache WHERE key = ? AND {_LIVE}", (key, time.time())).fetchone()
        return default if row is None else self._load(row[0])

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        self._db().execute("INSERT OR REPLACE INTO cache (key, value, expires) VALUES (?, ?, ?)",
                           (key, self._dump(value), self.get_backend_timeout(timeout)))
        self._wrote()

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        cursor = self._db().execute(
            "INSERT INTO cache (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value, expires = excluded.expires "
            "WHERE cache.expires IS NOT NULL AND cache.expires <= ?",  # only over an expired entry
            (key, self._dump(value), self.get_backend_timeout(timeout), time.time()))
        self._wrote()
        return cursor.rowcount == 1

    def incr(self, key, delta=1, version=None):
        key = self.make_and_validate_key(key, version=version)
        row = self._db().execute(
            f"UPDATE cache SET value = value + ? WHERE key = ? AND typeof(value) = 'integer' AND {_LIVE} "
            "RETURNING value", (delta, key, time.time())).fetchone()
        if row is None:
            raise ValueError(f"Key '{key}' not found or not an integer")
        return row[0]

    def count_hit(self, key, timeout, version=None) -> int:
        """Add one to the integer at ``key`` and return it; a missing or expired
        entry starts again at 1, living ``timeout`` seconds. One statement, so
        atomic across processes: what a fixed-window throttle needs per request
        (``add`` then ``incr`` took two writes)."""
        key = self.make_and_validate_key(key, version=version)
        now = time.time()
        row = self._db().execute(
            "INSERT INTO cache (key, value, expires) VALUES (?, 1, ?) ON CONFLICT (key) DO UPDATE SET "
            "value = CASE WHEN typeof(cache.value) = 'integer' AND " + _LIVE.replace("expires", "cache.expires")
            + " THEN cache.value + 1 ELSE 1 END, "
            "expires = CASE WHEN typeof(cache.value) = 'integer' AND " + _LIVE.replace("expires", "cache.expires")
            + " THEN cache.expires ELSE excluded.expires END RETURNING value",
            (key, self.get_backend_timeout(timeout), now, now)).fetchone()
        self._wrote()
        return row[0]

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        cursor = self._db().execute(f"UPDATE cache SET expires = ? WHERE key = ? AND {_LIVE}",
                                    (self.get_backend_timeout(timeout), key, time.time()))
        return cursor.rowcount == 1

    def delete(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._db().execute("DELETE FROM cache WHERE key = ?", (key,)).rowcount == 1

    def has_key(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._db().execute(f"SELECT 1 FROM cache WHERE key = ? AND {_LIVE}", (key, time.time())).fetchone() \
            is not None

    def clear(self):
        self._db().execute("DELETE FROM cache")

    def close(self, **kwargs):
        pass  # one connection per thread for the life of the worker
