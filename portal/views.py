import secrets

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.utils.translation import gettext as _
from django.utils.translation import pgettext
from django.views.decorators.http import require_GET, require_POST

from portal import services
from portal.access import capability_required
from portal.forms import LoginForm, TokenCreateForm
from portal.readiness import readiness
from portal.scope import SIGNED_IN, request_scope
from portal.selectors import token_get, token_list
from portal.landing import landing_url, roles_for
from portal.models import Role
from portal.tenancy import choose_tenant, refresh_scope, session_tenant, tenants_of


class LoginView(auth_views.LoginView):
    form_class = LoginForm
    redirect_authenticated_user = True

    def form_valid(self, form):
        self.wanted_tenant = form.cleaned_data.get("tenant")
        return super().form_valid(form)

    def get_success_url(self):
        # After auth_login, before the redirect: the organisation named in the
        # form decides the acting roles, and so the landing page.
        slug = getattr(self, "wanted_tenant", None)
        if slug:
            self.wanted_tenant = None
            wanted = slug.strip().lower()
            tenant = next((t for t in tenants_of(self.request.user)
                           if wanted in (t.slug.lower(), t.name.lower())), None)
            if tenant is None:
                messages.warning(self.request, _("You are not a member of that organisation; using your first one."))
            else:
                choose_tenant(self.request, tenant)
        if getattr(self.request, "tenant", None) is None:
            self.request.tenant = session_tenant(self.request)
            refresh_scope(self.request)  # signed in now: the anonymous scope no longer holds
        return super().get_success_url()

    def get_default_redirect_url(self):
        """Without a ``next``: where the acting role's work is (portal.landing)."""
        return landing_url(self.request)


def permission_denied(request, exception=None):
    """The 403 page: which roles the refused page needs and which the user holds
    here, with a link to where their own work is. (A missing capability on
    one's own organisation; other organisations' objects answer 404.)"""
    from portal.api_errors import is_api_path, problem_response

    if is_api_path(request.path):
        return problem_response(403, "You do not have permission to perform this action.")
    capability = str(exception) if exception is not None and exception.args else ""
    scope = request_scope(request)
    held = [role for role in Role if role in scope.roles] if scope.tenant else []
    separator = pgettext("list separator", ", ")
    return render(request, "403.html", {
        "needed_roles": separator.join(str(role.label) for role in roles_for(capability)),
        "held_roles": separator.join(str(role.label) for role in held),
        "start_url": landing_url(request) if getattr(request.user, "is_authenticated", False) else "/",
    }, status=403)


@login_required
@require_POST
@capability_required(SIGNED_IN)
def tenant_switch(request):
    tenant = next((t for t in tenants_of(request.user) if t.slug == request.POST.get("tenant")), None)
    if tenant is None:
        messages.error(request, _("You are not a member of that organisation."))
    else:
        choose_tenant(request, tenant)
    return redirect(safe_next(request, request.POST.get("next")))


def safe_next(request, target: str | None, default: str = "/") -> str:
    """``target`` when it stays on this site, else ``default``: a ``next`` taken
    from a request is never followed off-site (``//host``, ``https://host``)."""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return default


TOKEN_FORM_NONCE = "token_form_nonce"


@never_cache  # it shows a new token once: no browser or proxy may keep a copy
@login_required
@capability_required(SIGNED_IN)  # anyone's own tokens; token_list() reads them under tokens.own
def tokens_page(request):
    scope = request.scope
    new_token = None
    form = TokenCreateForm(request.POST or None)
    if request.method == "POST" and request.POST.get("nonce") != request.session.pop(TOKEN_FORM_NONCE, None):
        # A reload of the page that showed a token re-sends its form: make no second token.
        messages.warning(request, _("That form was already used, so no new token was created."))
        return redirect("tokens")
    if request.method == "POST" and form.is_valid():
        if scope.tenant is None:
            messages.error(request, _("You are not a member of any organisation."))
        else:
            row, new_token = services.token_create(
                user=scope.user, tenant=scope.tenant, days=form.cleaned_data["days"],
                label=form.cleaned_data["label"], context=scope.context)
            form = TokenCreateForm()
    request.session[TOKEN_FORM_NONCE] = secrets.token_urlsafe(16)
    return render(request, "portal/tokens.html", {
        "form": form, "new_token": new_token, "tokens": token_list(scope),
        "nonce": request.session[TOKEN_FORM_NONCE],
    }, status=400 if request.method == "POST" and form.errors else 200)


@login_required
@require_POST
@capability_required("tokens.own", hide=True)
def token_revoke(request, token_id: int):
    token = token_get(request.scope, token_id)
    services.token_revoke(token=token, by_user=request.scope.user, context=request.scope.context)
    messages.success(request, _("Token %(prefix)s… revoked.") % {"prefix": token.prefix})
    return redirect("tokens")


@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    checks = readiness()
    ready = all(ok for ok, _ in checks.values())
    body = {"status": "ready" if ready else "not ready"}
    if request.user.is_authenticated and request.user.is_staff:
        body["checks"] = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()}
    return JsonResponse(body, status=200 if ready else 503)
