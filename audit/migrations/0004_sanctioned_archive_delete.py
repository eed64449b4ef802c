"""Retention without weakening append-only: the DELETE trigger now lets a row
go only while an archive authorisation covers it (same chain, seq at or below
the authorised bound). `audit.retention.archive_chain` writes that
authorisation, deletes the archived prefix, records `audit.archive`, and
removes the authorisation, all in one transaction. UPDATE and TRUNCATE stay
refused; checkpoints become append-only too.

Residual risk (docs/audit-export-format.md, "Retention"): a session that can
INSERT into audit_archiveauthorisation can delete a chain's oldest events.
That is no more than a session that can DROP TRIGGER could already do, and
`audit_verify` still reports it: a chain may only start after seq 1 when a
MAC'd `audit.archive` event names the exact seq and hash it starts from,
which needs the audit key. PostgreSQL also refuses to commit a transaction
that leaves an authorisation behind.

`STATEMENTS` is the complete trigger set after this migration (tests lift and
restore it around flushes)."""
import importlib

from django.db import migrations

EVENTS = "audit_auditevent"
CHECKPOINTS = "audit_auditcheckpoint"
AUTHORISATIONS = "audit_archiveauthorisation"

_previous = importlib.import_module("audit.migrations.0002_append_only_triggers")

SQLITE_CREATE = [
    f"""CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON {EVENTS}
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only: UPDATE refused'); END""",
    f"""CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON {EVENTS}
        WHEN NOT EXISTS (SELECT 1 FROM {AUTHORISATIONS} a
                         WHERE a.chain = OLD.chain AND OLD.seq <= a.through_seq)
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only: DELETE refused'); END""",
    f"""CREATE TRIGGER audit_checkpoint_no_update BEFORE UPDATE ON {CHECKPOINTS}
        BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only: UPDATE refused'); END""",
    f"""CREATE TRIGGER audit_checkpoint_no_delete BEFORE DELETE ON {CHECKPOINTS}
        BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only: DELETE refused'); END""",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS audit_event_no_update",
    "DROP TRIGGER IF EXISTS audit_event_no_delete",
    "DROP TRIGGER IF EXISTS audit_checkpoint_no_update",
    "DROP TRIGGER IF EXISTS audit_checkpoint_no_delete",
]

POSTGRES_CREATE = [
    """CREATE OR REPLACE FUNCTION audit_event_refuse_change() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP; END;
       $$ LANGUAGE plpgsql""",
    f"""CREATE OR REPLACE FUNCTION audit_event_guard_delete() RETURNS trigger AS $$
       BEGIN
         IF EXISTS (SELECT 1 FROM {AUTHORISATIONS} a
                    WHERE a.chain = OLD.chain AND OLD.seq <= a.through_seq) THEN
           RETURN OLD;
         END IF;
         RAISE EXCEPTION 'audit events are append-only: DELETE refused';
       END;
       $$ LANGUAGE plpgsql""",
    """CREATE OR REPLACE FUNCTION audit_checkpoint_refuse_change() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'audit checkpoints are append-only: % refused', TG_OP; END;
       $$ LANGUAGE plpgsql""",
    f"""CREATE OR REPLACE FUNCTION audit_archive_authorisation_must_close() RETURNS trigger AS $$
       BEGIN
         IF EXISTS (SELECT 1 FROM {AUTHORISATIONS} WHERE id = NEW.id) THEN
           RAISE EXCEPTION 'an archive authorisation must be removed by the transaction that wrote it';
         END IF;
         RETURN NULL;
       END;
       $$ LANGUAGE plpgsql""",
    f"""CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON {EVENTS}
        FOR EACH ROW EXECUTE FUNCTION audit_event_refuse_change()""",
    f"""CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON {EVENTS}
        FOR EACH ROW EXECUTE FUNCTION audit_event_guard_delete()""",
    f"""CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON {EVENTS}
        FOR EACH STATEMENT EXECUTE FUNCTION audit_event_refuse_change()""",
    f"""CREATE TRIGGER audit_checkpoint_no_update BEFORE UPDATE ON {CHECKPOINTS}
        FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_refuse_change()""",
    f"""CREATE TRIGGER audit_checkpoint_no_delete BEFORE DELETE ON {CHECKPOINTS}
        FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_refuse_change()""",
    f"""CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON {CHECKPOINTS}
        FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoint_refuse_change()""",
    f"""CREATE CONSTRAINT TRIGGER audit_archive_authorisation_closes AFTER INSERT ON {AUTHORISATIONS}
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        EXECUTE FUNCTION audit_archive_authorisation_must_close()""",
]
POSTGRES_DROP = [
    f"DROP TRIGGER IF EXISTS audit_event_no_update ON {EVENTS}",
    f"DROP TRIGGER IF EXISTS audit_event_no_delete ON {EVENTS}",
    f"DROP TRIGGER IF EXISTS audit_event_no_truncate ON {EVENTS}",
    f"DROP TRIGGER IF EXISTS audit_checkpoint_no_update ON {CHECKPOINTS}",
    f"DROP TRIGGER IF EXISTS audit_checkpoint_no_delete ON {CHECKPOINTS}",
    f"DROP TRIGGER IF EXISTS audit_checkpoint_no_truncate ON {CHECKPOINTS}",
    f"DROP TRIGGER IF EXISTS audit_archive_authorisation_closes ON {AUTHORISATIONS}",
    "DROP FUNCTION IF EXISTS audit_event_refuse_change()",
    "DROP FUNCTION IF EXISTS audit_event_guard_delete()",
    "DROP FUNCTION IF EXISTS audit_checkpoint_refuse_change()",
    "DROP FUNCTION IF EXISTS audit_archive_authorisation_must_close()",
]

STATEMENTS = {"sqlite": (SQLITE_CREATE, SQLITE_DROP), "postgresql": (POSTGRES_CREATE, POSTGRES_DROP)}


def _execute(schema_editor, statements):
    for statement in statements:
        schema_editor.execute(statement, params=None)


def install(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    _execute(schema_editor, _previous.STATEMENTS[vendor][1])
    _execute(schema_editor, STATEMENTS[vendor][0])


def restore_previous(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    _execute(schema_editor, STATEMENTS[vendor][1])
    _execute(schema_editor, _previous.STATEMENTS[vendor][0])


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_review_checkpoints_retention")]
    operations = [migrations.RunPython(install, restore_previous)]
