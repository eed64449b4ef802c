"""Walking the chains: every MAC recomputed, every link and sequence checked."""
from __future__ import annotations

from dataclasses import dataclass

from audit.canonical import compute_mac
from audit.models import GENESIS_HASH, MAC_FIELDS, AuditEvent
from keystore.keys import get_keyring


@dataclass
class ChainReport:
    chain: int
    ok: bool
    events: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    bad_event_id: int | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"chain {self.chain}: intact, {self.events} events, head seq {self.head_seq}"
        return f"chain {self.chain}: BROKEN at seq {self.bad_seq} (event id {self.bad_event_id}): {self.reason}"


def chains() -> list[int]:
    return list(AuditEvent.objects.order_by().values_list("chain", flat=True).distinct())


def verify_chain(chain: int, *, keys_by_id: dict[str, bytes] | None = None,
                 start_seq: int = 1, start_hash: str = GENESIS_HASH) -> ChainReport:
    """Check one chain from (start_seq, start_hash) to its head.

    Detects a changed field (MAC), a deleted event (gap in seq), an inserted or
    forged event (MAC or link), and reordered events (link)."""
    keys = keys_by_id if keys_by_id is not None else get_keyring().audit_keys_by_id()
    expected_seq, expected_prev = start_seq, start_hash
    count = 0
    rows = (AuditEvent.objects.filter(chain=chain, seq__gte=start_seq).order_by("seq")
            .values("id", "mac", *MAC_FIELDS).iterator(chunk_size=5000))

    def broken(row, reason):
        return ChainReport(chain, False, count, expected_seq - 1, expected_prev,
                           row["seq"], row["id"], reason)

    for row in rows:
        if row["seq"] != expected_seq:
            if row["seq"] > expected_seq:
                return broken(row, f"events {expected_seq}..{row['seq'] - 1} are missing (deleted)")
            return broken(row, f"sequence number out of order (expected {expected_seq})")
        key = keys.get(row["key_id"])
        if key is None:
            return broken(row, f"MAC key {row['key_id']} is not held (unknown or forged key id)")
        fields = {name: row[name] for name in MAC_FIELDS}
        if compute_mac(key, fields) != row["mac"]:
            return broken(row, "MAC does not match: a field was changed or the event was forged")
        if row["prev_hash"] != expected_prev:
            return broken(row, "link to the previous event is broken (inserted, removed or reordered event)")
        if row["chain"] != (row["tenant_id"] or 0):
            return broken(row, "event sits in another tenant's chain")
        expected_seq, expected_prev = expected_seq + 1, row["mac"]
        count += 1
    return ChainReport(chain, True, count, expected_seq - 1, expected_prev)
