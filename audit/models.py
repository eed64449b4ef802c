"""Where Django looks for the audit app's models; they live in the ledger
(audit/ledger/models.py)."""
from audit.ledger.models import (  # noqa: F401
    GENESIS_HASH, MAC_FIELDS, PLATFORM_CHAIN, ArchiveAuthorisation, AuditCheckpoint, AuditEvent,
    AuditEventImmutable, AuditEventQuerySet, ExportJob, Outcome,
)
