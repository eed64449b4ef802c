"""Appending many events at once with a valid chain, for benchmarks, tests and
imports that carry their own timestamps. Same canonical form, MAC and links
as record_event; one transaction per batch, under the chain lock.

Not for request paths: record_event is the one writer there.
"""
from __future__ import annotations

import itertools
from typing import Iterable

from django.db import connection, transaction

from audit.ledger.canonical import compute_mac
from audit.ledger.models import GENESIS_HASH, MAC_FIELDS, PLATFORM_CHAIN
from audit.ledger.services import _INSERT_FIELDS, _LAST_SQL, _TABLE, _lock_chain, _mac_key
from keystore.keys import get_keyring

_INSERT_MANY_SQL = "INSERT INTO {} ({}) VALUES ({})".format(
    _TABLE, ", ".join(f.column for f in _INSERT_FIELDS), ", ".join(["%s"] * len(_INSERT_FIELDS)))
_DEFAULTS = {name: None for name in MAC_FIELDS}
_DEFAULTS.update({name: "" for name in ("username", "auth_method", "user_agent", "session_digest", "request_id",
                                        "resource_type", "resource_id", "query", "kb_name", "model_id")})
_DEFAULTS.update(outcome="success", detail={})


def bulk_append(*, tenant, events: Iterable[dict], batch_size: int = 20000) -> int:
    """Append ``events`` (dicts of event fields; ``occurred_at`` and ``action``
    required, in time order) to the tenant's chain. Returns how many."""
    key, current_key_id = _mac_key(get_keyring().audit_key)
    chain = tenant.pk if tenant is not None else PLATFORM_CHAIN
    written = 0
    iterator = iter(events)
    while True:
        chunk = list(itertools.islice(iterator, batch_size))
        if not chunk:
            return written
        with transaction.atomic(), connection.cursor() as cursor:
            _lock_chain(chain)
            cursor.execute(_LAST_SQL, [chain])
            last = cursor.fetchone()
            seq, prev = (last[0], last[1]) if last else (0, GENESIS_HASH)
            rows = []
            for fields in chunk:
                seq += 1
                values = dict(_DEFAULTS)
                values.update(fields)
                values.update(chain=chain, seq=seq, prev_hash=prev, key_id=current_key_id,
                              tenant_id=tenant.pk if tenant is not None else None)
                values["occurred_at"] = values["occurred_at"].replace(
                    microsecond=values["occurred_at"].microsecond // 1000 * 1000)
                values["mac"] = prev = compute_mac(key, values)
                rows.append([field.get_db_prep_save(values[field.attname], connection) for field in _INSERT_FIELDS])
            cursor.executemany(_INSERT_MANY_SQL, rows)
            written += len(rows)
