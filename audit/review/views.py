"""The compliance dashboard: one page, rendered on the server, no outside asset."""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from audit.ledger import services
from audit.ledger.checkpoints import SigningUnavailable
from audit.ledger.export import ExportError
from audit.review import selectors
from audit.review.exports import export_job_submit
from keystore.envelope import EnvelopeError
from portal.access import capability_required

CHART_WIDTH, CHART_HEIGHT = 720, 180


@login_required
@require_GET
@capability_required("audit.review")
def dashboard(request):
    scope = request.scope
    stats = selectors.dashboard(scope, days=30)
    services.audit_view_record(user=scope.user, tenants=[scope.tenant], context=scope.context, page="dashboard")
    step = CHART_WIDTH / stats["days"]
    bars = []
    for index, day in enumerate(stats["per_day"]):
        total_h = CHART_HEIGHT * day.total / stats["max_per_day"]
        failed_h = CHART_HEIGHT * day.failed / stats["max_per_day"]
        bars.append({"day": day, "x": round(index * step + 1, 1), "width": round(step - 2, 1),
                     "y": round(CHART_HEIGHT - total_h, 1), "height": round(total_h, 1),
                     "failed_y": round(CHART_HEIGHT - failed_h, 1), "failed_height": round(failed_h, 1)})
    return render(request, "audit/dashboard.html", {
        "stats": stats, "bars": bars, "chart_width": CHART_WIDTH, "chart_height": CHART_HEIGHT,
        "exports": selectors.export_job_list(scope), "keep_hours": settings.AUDIT_EXPORT_KEEP_HOURS,
        "export_form": request.session.pop("export_form", {}),
    })


@login_required
@require_POST
@capability_required("audit.review")
def export_submit(request):
    """The dashboard's range export: queued for the task worker, then back to the dashboard's list."""
    values = {name: request.POST.get(name, "")[:200] for name in ("from", "to", "recipient")}
    try:
        export_job_submit(scope=request.scope, start_text=values["from"], end_text=values["to"],
                          recipient=values["recipient"].strip())
    except (ExportError, EnvelopeError, SigningUnavailable) as exc:
        messages.error(request, _("The export was not queued: %(reason)s") % {"reason": exc})
        request.session["export_form"] = values  # shown again, to be corrected
    else:
        messages.success(request, _("The export is queued. Its bundle can be downloaded here when it is written."))
    return redirect("/audit/dashboard/#exports")
