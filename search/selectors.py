"""Reads of the search app, always scoped to the acting tenant."""
from django.db.models import Count

from portal.tenancy import get_scoped_or_404, scoped, scoped_row
from search.models import Document, KnowledgeBase


def kb_by_reference(request, reference: int | str) -> KnowledgeBase | None:
    """The acting tenant's knowledge base by id (an int) or by name (a str)."""
    lookup = {"pk": reference} if isinstance(reference, int) else {"name": reference}
    return scoped_row(KnowledgeBase, request, **lookup)


def kb_list(request):
    return scoped(KnowledgeBase, request).annotate(line_count=Count("documents")).order_by("name")


def kb_get(request, kb_id) -> KnowledgeBase:
    return get_scoped_or_404(KnowledgeBase.objects.select_related("tenant"), request, pk=kb_id)


def document_list(request, kb: KnowledgeBase):
    return scoped(Document, request).filter(knowledge_base=kb).order_by("id")


def document_get(request, kb: KnowledgeBase, doc_id) -> Document:
    return get_scoped_or_404(Document.objects.select_related("knowledge_base__tenant").filter(knowledge_base=kb),
                             request, pk=doc_id)
