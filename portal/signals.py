"""Login, failed login and logout become audit events."""
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from audit.ledger.services import record_event
from portal.services import login_failure_record
from portal.scope import request_scope, scope_from_request
from portal.tenancy import session_tenant


@receiver(user_logged_in)
def record_login(sender, request, user, **kwargs):
    request.user = user
    # A new session key and a new user: the scope the request came in with no longer holds.
    scope = scope_from_request(request, tenant=session_tenant(request))
    record_event(action="auth.login", tenant=scope.tenant, user=user, context=scope.context)


@receiver(user_login_failed)
def record_login_failed(sender, credentials, request=None, **kwargs):
    locked = bool(request is not None and getattr(request, "axes_locked_out", False))
    login_failure_record(username=str(credentials.get("username", "")), locked_out=locked,
                         context=request_scope(request).context if request is not None else {})


@receiver(user_logged_out)
def record_logout(sender, request, user, **kwargs):
    if user is None:
        return
    scope = request_scope(request)
    record_event(action="auth.logout", tenant=scope.tenant, user=user, context=scope.context)
