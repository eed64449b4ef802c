"""The Django admin as the portal's audit review: opened by role, not by
Django's is_staff flag, and with portal pages instead of the admin's own
login and "not authorised" screens."""
from __future__ import annotations

from functools import update_wrapper

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.views.decorators.cache import never_cache
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_protect

from portal.landing import reviews_audit
from portal.scope import record_denial, request_scope

REVIEW_CAPABILITY = "audit.review"


class PortalAdminSite(admin.AdminSite):
    site_header = _("Sealed search: audit review")
    site_title = _("Sealed search")
    index_title = _("Audit review")
    site_url = "/"
    capability = REVIEW_CAPABILITY  # declared for the URLconf walk (portal.access); has_permission checks it

    def has_permission(self, request):
        """Platform superusers, and compliance officers of any organisation
        (each model admin then scopes what they see)."""
        return reviews_audit(request.user)

    def refuse(self, request):
        """Signed in but no reviewer: the portal's 403 page naming the role
        needed (via handler403), and an audit record of the attempt."""
        record_denial(request_scope(request), action="access.denied", resource_type="capability", resource_id=REVIEW_CAPABILITY)
        raise PermissionDenied(REVIEW_CAPABILITY)

    def admin_view(self, view, cacheable=False):
        def inner(request, *args, **kwargs):
            if not self.has_permission(request):
                if request.user.is_authenticated:
                    self.refuse(request)
                return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
            return view(request, *args, **kwargs)

        if not cacheable:
            inner = never_cache(inner)
        if not getattr(view, "csrf_exempt", False):
            inner = csrf_protect(inner)
        return update_wrapper(inner, view)

    def login(self, request, extra_context=None):
        """One sign-in page for the whole portal: /accounts/login/."""
        if self.has_permission(request):
            return super().login(request, extra_context)  # redirects to the admin index
        if request.user.is_authenticated:
            self.refuse(request)
        return redirect_to_login(request.GET.get("next") or request.get_full_path(), settings.LOGIN_URL)
