"""Objects of another tenant for the URLconf-walking isolation test
(tests/portal/test_tenant_isolation.py)."""
import itertools

import numpy as np

from search.models import Document, ImportJob, KnowledgeBase


_serial = itertools.count(1)


def make_kb(tenant, owner):
    return KnowledgeBase.objects.create(tenant=tenant, name=f"secret kb {next(_serial)} of {tenant.slug}",
                                        model_id="m", dimensions=4,
                                        created_by=owner)


def make_document(tenant, owner):
    kb = make_kb(tenant, owner)
    return Document.objects.create(tenant=tenant, knowledge_base=kb, text=f"secret text of {tenant.slug}",
                                   source_line=1, digest="d" * 64,
                                   embedding=np.ones(4, dtype="<f4").tobytes())


def make_import_job(tenant, owner):
    kb = make_kb(tenant, owner)
    return ImportJob.objects.create(tenant=tenant, knowledge_base=kb, created_by=owner, format="txt",
                                    source_name=f"secret file of {tenant.slug}", payload=b"secret line\n", total=1)


FACTORIES = {
    "kb_id": (make_kb, lambda kb: KnowledgeBase.objects.filter(pk=kb.pk, name=kb.name).exists()),
    "doc_id": (make_document, lambda doc: Document.objects.filter(pk=doc.pk, text=doc.text).exists()),
    "job_id": (make_import_job, lambda job: ImportJob.objects.filter(pk=job.pk, status="queued").exists()),
}
