"""The embedding moves into pgvector on PostgreSQL.

SQLite: the ``vector`` column is added and stays empty; the float32 bytes
remain where the numpy index reads them. PostgreSQL: the extension is
created, each stored embedding is copied into ``vector`` and its bytes
cleared, in batches; backwards, the bytes are rebuilt from the vectors."""
import numpy as np
import pgvector.django
from django.db import migrations, models

BATCH = 2000


def _batches(Document, **filters):
    last = 0
    while True:
        rows = list(Document.objects.filter(pk__gt=last, **filters).order_by("pk")[:BATCH])
        if not rows:
            return
        yield rows
        last = rows[-1].pk


def bytes_to_vectors(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    Document = apps.get_model("search", "Document")
    for rows in _batches(Document, embedding__isnull=False, vector__isnull=True):
        for row in rows:
            row.vector = np.frombuffer(bytes(row.embedding), dtype="<f4")
            row.embedding = None
        Document.objects.bulk_update(rows, ["vector", "embedding"])


def vectors_to_bytes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    Document = apps.get_model("search", "Document")
    for rows in _batches(Document, vector__isnull=False):
        for row in rows:
            row.embedding = np.asarray(row.vector, dtype="<f4").tobytes()
            row.vector = None
        Document.objects.bulk_update(rows, ["vector", "embedding"])


class Migration(migrations.Migration):

    dependencies = [
        ("search", "0002_kb_min_score_document_source_name"),
    ]

    operations = [
        pgvector.django.VectorExtension(),
        migrations.AlterField(
            model_name="document",
            name="embedding",
            field=models.BinaryField(help_text="SQLite: float32 little-endian, L2-normalised", null=True),
        ),
        migrations.AddField(
            model_name="document",
            name="vector",
            field=pgvector.django.VectorField(blank=True, help_text="PostgreSQL: the embedding as a pgvector vector",
                                              null=True),
        ),
        migrations.RunPython(bytes_to_vectors, vectors_to_bytes, elidable=False),
    ]
