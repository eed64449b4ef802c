"""Reads of the search app, always through the acting scope: reading a
knowledge base or its documents needs kb.read in the acting tenant."""
from django.db.models import Count

from portal.scope import Scope, get_scoped_or_404, scoped, scoped_row
from search.models import Document, ImportJob, KnowledgeBase

READ = "kb.read"


def kb_by_reference(scope: Scope, reference: int | str) -> KnowledgeBase | None:
    """The acting tenant's knowledge base by id (an int) or by name (a str)."""
    lookup = {"pk": reference} if isinstance(reference, int) else {"name": reference}
    return scoped_row(scope, KnowledgeBase, READ, **lookup)


def kb_list(scope: Scope):
    return scoped(scope, KnowledgeBase, READ).annotate(line_count=Count("documents")).order_by("name")


def kb_get(scope: Scope, kb_id) -> KnowledgeBase:
    return get_scoped_or_404(scope, KnowledgeBase.objects.select_related("tenant"), READ, pk=kb_id)


def document_list(scope: Scope, kb: KnowledgeBase):
    return scoped(scope, Document, READ).filter(knowledge_base=kb).order_by("id")


def document_get(scope: Scope, kb: KnowledgeBase, doc_id) -> Document:
    return get_scoped_or_404(scope, Document.objects.select_related("knowledge_base__tenant").filter(knowledge_base=kb),
                             READ, pk=doc_id)


def import_job_get(scope: Scope, job_id, kb: KnowledgeBase | None = None) -> ImportJob:
    """An import of the acting tenant (and, given ``kb``, of that knowledge base only)."""
    jobs = ImportJob.objects.select_related("knowledge_base")
    return get_scoped_or_404(scope, jobs.filter(knowledge_base=kb) if kb else jobs, READ, pk=job_id)


def import_job_list(scope: Scope, kb: KnowledgeBase):
    """The knowledge base's imports, newest first."""
    return scoped(scope, ImportJob, READ).filter(knowledge_base=kb).order_by("-id")
