"""Web pages for search, radar and knowledge bases. Thin: forms in, a service
call, a template out."""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_POST

from portal.access import capability_required
from portal.api_errors import problem
from portal.landing import landing_url
from search import selectors, services
from search.failures import failure_status
from search.forms import KbCreateForm, RadarForm, SearchForm, UploadForm


def _failure_message(exc) -> tuple[int, str]:
    """Status and message for a failure a person should see on the page."""
    known = failure_status(exc)
    if known is None:
        raise exc
    return known


def _form_refused(request, form, action: str, resource_type: str) -> tuple[int, str | None]:
    """A form the page refuses is audited like the service's refusals; 400 (503 without audit)."""
    try:
        services.record_form_refusal(request.scope, action, resource_type, list(form.errors))
    except Exception as exc:
        return _failure_message(exc)
    return 400, None


def _no_search(request):
    start = landing_url(request)  # a compliance officer's work is the dashboard
    return redirect(start) if start != request.path else render(request, "search/no_search.html")


@login_required
@capability_required("search", refused=_no_search)
def home(request):
    scope = request.scope
    kbs = list(selectors.kb_list(scope))
    form = SearchForm(request.POST or None, kbs=kbs, initial={"kb": kbs[0].pk if kbs else None})
    result, error, status = None, None, 200
    if request.method == "POST":
        if form.is_valid():
            kb = selectors.kb_get(scope, form.cleaned_data["kb"])
            try:
                result = services.search_kb(scope=scope, kb=kb, query=form.cleaned_data["query"],
                                            top_k=form.cleaned_data["top_k"])
            except Exception as exc:
                status, error = _failure_message(exc)
        else:
            status, error = _form_refused(request, form, "search.failed", "knowledge_base")
    return render(request, "search/home.html",
                  {"form": form, "kbs": kbs, "result": result, "error": error,
                   "served_model": services.served_model()}, status=status)


@login_required
@capability_required("search")
def radar(request):
    scope = request.scope
    form = RadarForm(request.POST or None)
    result, error, status = None, None, 200
    if request.method == "POST":
        if form.is_valid():
            try:
                result = services.radar_search(
                    scope=scope, documents=form.cleaned_data["documents"].splitlines(),
                    query=form.cleaned_data["query"], top_k=form.cleaned_data["top_k"])
            except Exception as exc:
                status, error = _failure_message(exc)
        else:
            status, error = _form_refused(request, form, "radar.failed", "radar")
    return render(request, "search/radar.html", {"form": form, "result": result, "error": error,
                                                 "max_lines": settings.RADAR_MAX_LINES,
                                                 "served_model": services.served_model()}, status=status)


@login_required
@capability_required("kb.read", POST=("kb.read", "kb.manage"))
def kb_list_page(request):
    scope = request.scope
    form = KbCreateForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                kb = services.kb_create(scope=scope, name=form.cleaned_data["name"],
                                        description=form.cleaned_data["description"],
                                        min_score=form.cleaned_data["min_score"])
            except services.SearchInputError as exc:
                form.add_error("name", str(exc))
            else:
                messages.success(request, _("Knowledge base “%(name)s” created. Upload a file to fill it.")
                                 % {"name": kb.name})
                return redirect("kb-detail", kb_id=kb.pk)
        status = 400
    return render(request, "search/kb_list.html", {"kbs": selectors.kb_list(scope), "form": form,
                                                   "served_model": services.served_model()}, status=status)


@login_required
@capability_required("kb.read")
def kb_detail_page(request, kb_id: int):
    kb = selectors.kb_get(request.scope, kb_id)
    page = Paginator(selectors.document_list(request.scope, kb), 50).get_page(request.GET.get("page"))
    recent = list(selectors.import_job_list(request.scope, kb)[:5])
    services.import_jobs_fail_lost(recent)
    imports = [(job, _job_state(job)) for job in recent]
    return render(request, "search/kb_detail.html", {
        "kb": kb, "page": page, "upload_form": UploadForm(), "imports": imports,
        "unfinished": next((state for _, state in imports if not state["finished"]), None),
        "max_upload_mb": settings.KB_MAX_UPLOAD_BYTES // (1024 * 1024),
    })


def _job_state(job) -> dict:
    """What the page shows of an import: its state, progress and a sentence."""
    if job.status == job.Status.QUEUED:
        message = _("Waiting for the import worker…")
    elif job.status == job.Status.RUNNING:
        message = _("Embedding: %(done)d of %(total)d entries…") % {"done": job.done, "total": job.total}
    elif job.status == job.Status.SUCCEEDED:
        added, skipped = job.added or 0, job.skipped_duplicates or 0
        message = _("%(added)s, %(skipped)s.") % {
            "added": ngettext("%(count)d entry added", "%(count)d entries added", added) % {"count": added},
            "skipped": ngettext("%(count)d duplicate skipped", "%(count)d duplicates skipped",
                                skipped) % {"count": skipped}}
    else:
        message = _("Import failed: %(error)s") % {"error": _(job.error) if job.error else ""}
    # The bar: the upload is its first tenth, the embedding the rest.
    percent = 100 if job.status == job.Status.SUCCEEDED else 10 + (90 * job.done // job.total if job.total else 0)
    return {"id": job.pk, "status": job.status, "total": job.total, "done": job.done, "percent": percent,
            "added": job.added,
            "skipped_duplicates": job.skipped_duplicates, "message": message, "finished": job.finished_at is not None,
            "url": reverse("kb-import", kwargs={"kb_id": job.knowledge_base_id, "job_id": job.pk})}


@login_required
@require_POST
@capability_required("kb.manage")
def kb_upload(request, kb_id: int):
    """Multipart upload: the file is checked now (a refused one answers 4xx)
    and imported by the task worker; 202 with the job's address, which the
    page polls (kb_import) to show progress."""
    kb = selectors.kb_get(request.scope, kb_id)
    upload = request.FILES.get("file")
    try:
        job = services.import_job_submit(scope=request.scope, kb=kb, name=upload.name if upload else "",
                                         file=upload, size=upload.size if upload else 0)
    except Exception as exc:
        status, message = _failure_message(exc)
        return JsonResponse(problem(status, message), status=status, content_type="application/problem+json")
    state = _job_state(job)
    return JsonResponse(state, status=202, headers={"Location": state["url"]})


@login_required
@require_GET
@capability_required("kb.read")
def kb_import(request, kb_id: int, job_id: int):
    """One import of this knowledge base, as JSON: what the page's progress bar reads."""
    kb = selectors.kb_get(request.scope, kb_id)
    job = selectors.import_job_get(request.scope, job_id, kb=kb)
    services.import_jobs_fail_lost([job])
    return JsonResponse(_job_state(job))


@login_required
@require_POST
@capability_required("kb.manage")
def kb_delete(request, kb_id: int):
    kb = selectors.kb_get(request.scope, kb_id)
    services.kb_delete(scope=request.scope, kb=kb)
    messages.success(request, _("Knowledge base “%(name)s” deleted.") % {"name": kb.name})
    return redirect("kb-list")


@login_required
@require_POST
@capability_required("kb.manage")
def document_delete(request, kb_id: int, doc_id: int):
    kb = selectors.kb_get(request.scope, kb_id)
    document = selectors.document_get(request.scope, kb, doc_id)
    services.document_delete(scope=request.scope, document=document)
    messages.success(request, _("Entry deleted."))
    # Back to the page the entry was on (the form says which), not page 1.
    page = request.POST.get("page", "")
    query = f"?page={int(page)}" if page.isascii() and page.isdigit() and 1 < int(page) < 10**9 else ""
    return redirect(reverse("kb-detail", kwargs={"kb_id": kb.pk}) + query)
