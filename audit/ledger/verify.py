"""Walking the chains: every MAC recomputed, every link and sequence checked."""
from __future__ import annotations

from dataclasses import dataclass

from audit.ledger.canonical import compute_mac
from audit.ledger.models import GENESIS_HASH, MAC_FIELDS, AuditEvent
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
    note: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"chain {self.chain}: intact, {self.events} events, head seq {self.head_seq}{self.note}"
        return f"chain {self.chain}: BROKEN at seq {self.bad_seq} (event id {self.bad_event_id}): {self.reason}"


def chains() -> list[int]:
    return list(AuditEvent.objects.order_by().values_list("chain", flat=True).distinct())


ARCHIVE_ACTION = "audit.archive"


def archived_through(chain: int) -> tuple[int, str, int] | None:
    """(last archived seq, its hash, seq of the `audit.archive` event saying so)
    for the newest archive of a chain, or None if it was never archived.

    The record is an ordinary chain event, so its MAC (checked when the walk
    reaches it) is what makes it trustworthy: forging one needs the audit key."""
    rows = (AuditEvent.objects.filter(chain=chain, action=ARCHIVE_ACTION, outcome="success")
            .order_by("-seq").values_list("seq", "detail")[:1])
    for seq, detail in rows:
        try:
            return int(detail["through_seq"]), str(detail["through_hash"]), seq
        except (KeyError, TypeError, ValueError):
            return None
    return None


def verify_chain(chain: int, *, keys_by_id: dict[str, bytes] | None = None,
                 start_seq: int | None = None, start_hash: str | None = None,
                 end_seq: int | None = None) -> ChainReport:
    """Check one chain from (start_seq, start_hash) to its head.

    Detects a changed field (MAC), a deleted event (gap in seq), an inserted or
    forged event (MAC or link), and reordered events (link). Without an
    explicit start, a chain whose oldest events were archived is walked from
    the seq and hash that its newest `audit.archive` event names; any other
    chain must start at seq 1 from the genesis hash."""
    keys = keys_by_id if keys_by_id is not None else get_keyring().audit_keys_by_id()
    archive_note = ""
    if start_seq is None:
        start_seq, start_hash = 1, GENESIS_HASH
        first = AuditEvent.objects.filter(chain=chain).order_by("seq").values_list("seq", flat=True).first()
        through = archived_through(chain) if first is not None and first > 1 else None
        if through is not None and through[0] == first - 1:
            start_seq, start_hash = through[0] + 1, through[1]
            archive_note = f" (seq 1..{through[0]} archived, per the audit.archive event at seq {through[2]})"
    elif start_hash is None:
        raise TypeError("start_hash is required with start_seq")
    expected_seq, expected_prev = start_seq, start_hash
    count = 0
    selected = AuditEvent.objects.filter(chain=chain, seq__gte=start_seq)
    if end_seq is not None:
        selected = selected.filter(seq__lte=end_seq)
    rows = (selected.order_by("seq")
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
    report = ChainReport(chain, True, count, expected_seq - 1, expected_prev)
    report.note = archive_note
    return report


def checkpointed_chains() -> list[int]:
    """Chains that have a stored checkpoint (their events may all be gone)."""
    from audit.ledger.models import AuditCheckpoint

    return list(AuditCheckpoint.objects.order_by().values_list("chain", flat=True).distinct())
