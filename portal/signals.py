"""Login, failed login and logout become audit events."""
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from audit.ledger.context import request_context
from audit.ledger.services import record_event
from portal.services import login_failure_record
from portal.tenancy import session_tenant


@receiver(user_logged_in)
def record_login(sender, request, user, **kwargs):
    request.user = user
    tenant = session_tenant(request)
    record_event(action="auth.login", tenant=tenant, user=user, context=request_context(request))


@receiver(user_login_failed)
def record_login_failed(sender, credentials, request=None, **kwargs):
    locked = bool(request is not None and getattr(request, "axes_locked_out", False))
    login_failure_record(username=str(credentials.get("username", "")), locked_out=locked,
                         context=request_context(request) if request is not None else {})


@receiver(user_logged_out)
def record_logout(sender, request, user, **kwargs):
    if user is None:
        return
    record_event(action="auth.logout", tenant=getattr(request, "tenant", None), user=user,
                 context=request_context(request))
