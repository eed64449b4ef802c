"""Login, failed login and logout become audit events."""
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from audit.context import request_context
from audit.models import Outcome
from audit.services import record_event
from portal.models import Membership
from portal.tenancy import session_tenant


@receiver(user_logged_in)
def record_login(sender, request, user, **kwargs):
    request.user = user
    tenant = session_tenant(request)
    record_event(action="auth.login", tenant=tenant, user=user, context=request_context(request))


@receiver(user_login_failed)
def record_login_failed(sender, credentials, request=None, **kwargs):
    """In the chain of each organisation the named account belongs to, so its
    compliance officers see attempts on their people (user id = that account);
    in the platform chain when the name matches no member. The same single
    query runs whether or not the account exists."""
    context = request_context(request) if request is not None else {}
    locked = bool(request is not None and getattr(request, "axes_locked_out", False))
    typed = str(credentials.get("username", ""))[:150]
    memberships = list(Membership.objects.filter(user__username=typed).select_related("tenant")
                       .order_by("tenant__slug"))
    tenants = list({m.tenant_id: m.tenant for m in memberships}.values()) or [None]
    for tenant in tenants:
        record_event(action="auth.login_failed", outcome=Outcome.DENIED if locked else Outcome.FAILURE,
                     tenant=tenant, context=context, username=typed,
                     user_id=memberships[0].user_id if memberships else None, detail={"locked_out": locked})


@receiver(user_logged_out)
def record_logout(sender, request, user, **kwargs):
    if user is None:
        return
    record_event(action="auth.logout", tenant=getattr(request, "tenant", None), user=user,
                 context=request_context(request))
