"""Reads of the portal app, scoped to the acting tenant."""
from portal.models import ApiToken
from portal.tenancy import has_capability, scoped


def token_list(request):
    """The acting tenant's tokens: all of them for its admins, one's own otherwise."""
    tokens = scoped(ApiToken.objects.select_related("user"), request)
    if not has_capability(request, "tokens.manage"):
        tokens = tokens.filter(user=request.user)
    return tokens
