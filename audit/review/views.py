"""The compliance dashboard: one page, rendered on the server, no outside asset."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit.ledger import services
from audit.review import selectors
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
    })
