"""The compliance dashboard: one page, rendered on the server, no outside asset."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit.ledger import services
from audit.ledger.context import request_context
from audit.review import selectors
from portal.tenancy import require_capability

CHART_WIDTH, CHART_HEIGHT = 720, 180


@login_required
@require_GET
def dashboard(request):
    require_capability(request, "audit.review")
    stats = selectors.dashboard(tenant=request.tenant, days=30)
    services.audit_view_record(user=request.user, tenants=[request.tenant], context=request_context(request),
                               page="dashboard")
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
    })
