"""The tenant foreign key's own index duplicated the first column of every
composite (tenant, …) index; each append wrote one more B-tree for nothing
(bench/audit_append.py). Dropped by name so SQLite does not rebuild the table
(a rebuild would also drop the append-only triggers)."""
import django.db.models.deletion
from django.db import migrations, models

INDEX = "audit_auditevent_tenant_id_570ea526"


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0004_sanctioned_archive_delete"),
        ("portal", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(f"DROP INDEX IF EXISTS {INDEX}",
                                  f'CREATE INDEX {INDEX} ON "audit_auditevent" ("tenant_id")'),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="auditevent",
                    name="tenant",
                    field=models.ForeignKey(blank=True, db_index=False, null=True,
                                            on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                            to="portal.tenant"),
                ),
            ],
        ),
    ]
