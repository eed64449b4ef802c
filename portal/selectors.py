"""Reads of the portal app, scoped to the acting tenant."""
from portal.models import ApiToken
from portal.scope import Scope, get_scoped_or_404, scoped


def token_list(scope: Scope):
    """The acting tenant's tokens: all of them for its admins, one's own otherwise."""
    tokens = scoped(scope, ApiToken.objects.select_related("user"), "tokens.own")
    if not scope.can("tokens.manage"):
        tokens = tokens.filter(user=scope.user)
    return tokens


def token_get(scope: Scope, token_id) -> ApiToken:
    """One of token_list's tokens, or 404 (recorded)."""
    return get_scoped_or_404(scope, token_list(scope), "tokens.own", pk=token_id)
