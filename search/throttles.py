from rest_framework.throttling import SimpleRateThrottle


class TokenOrUserRateThrottle(SimpleRateThrottle):
    """One budget per API token, or per user for session requests, shared by
    every gunicorn worker through the configured cache."""

    scope = "token_or_user"

    def get_cache_key(self, request, view):
        token = getattr(request._request, "api_token", None)
        if token is not None:
            ident = f"token:{token.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
