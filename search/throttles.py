from rest_framework.throttling import SimpleRateThrottle

from portal.models import ApiToken


class TokenOrUserRateThrottle(SimpleRateThrottle):
    """One budget per API token, or per user for session requests, shared by
    every gunicorn worker through the configured cache (portal.cache).

    A fixed window: at most ``num_requests`` in each ``duration`` counted from
    the epoch, one atomic ``count_hit`` statement a request, so the cache must
    be ``portal.cache.SQLiteCache`` (settings configure no other). DRF's
    default keeps and rewrites the time of every request in the window."""

    scope = "token_or_user"

    def get_cache_key(self, request, view):
        token = request.auth  # set by DRF's authentication, which runs before the throttles
        if isinstance(token, ApiToken):
            ident = f"token:{token.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def allow_request(self, request, view):
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        self.now = self.timer()
        window = int(self.now // self.duration)
        self.window_ends = (window + 1) * self.duration
        key = f"{key}:{window}"
        return self.cache.count_hit(key, self.duration + 1) <= self.num_requests

    def wait(self):
        return max(0.0, self.window_ends - self.now)
