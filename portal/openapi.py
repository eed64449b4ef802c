"""The OpenAPI document tells the truth about errors: every operation lists the
4xx (and 503) answers it can give, each an RFC 9457 problem
(application/problem+json, the Problem component; see portal.api_errors)."""
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from portal.api_errors import PROBLEM


class ProblemSerializer(serializers.Serializer):
    # Members every problem has, and the optional ones some carry. (A comment,
    # not a docstring: docstrings become the public API description.)
    type = serializers.CharField(help_text='"about:blank"')
    title = serializers.CharField(help_text="the HTTP status phrase")
    status = serializers.IntegerField()
    detail = serializers.CharField(help_text="what went wrong, for a person")
    errors = serializers.JSONField(required=False, help_text="per field: the messages about it")
    request_id = serializers.CharField(required=False, help_text="quote it when reporting a problem")
    limit = serializers.CharField(required=False, help_text="the setting whose limit the request exceeded")


PROBLEM_STATUSES = {
    400: "The request is invalid: the problem says which field and why.",
    401: "No valid credentials: a missing, unknown, expired or revoked token.",
    403: "Refused: a session request without its CSRF token, or a presigned URL that does not verify.",
    404: "Not found, or not the acting tenant's (or the role does not allow it; never 403).",
    409: "Conflict: the knowledge base was embedded with another model than the one served, or a "
         "background export has not finished.",
    410: "Gone: a background export's bundle was removed after AUDIT_EXPORT_KEEP_HOURS.",
    413: "Too large: the body, a query or a list is over its limit (the problem names the limit).",
    415: "The body is not application/json.",
    429: "Too many requests for this token or user; retry after the Retry-After header's seconds.",
    503: "Temporarily unavailable (the model, the database or the audit signing key); retry later.",
}


class PortalAutoSchema(AutoSchema):
    def problem_statuses(self) -> list[int]:
        has_body = self.method in ("POST", "PUT", "PATCH")
        has_query = any(p.get("in") == "query" for p in self._get_parameters())
        codes = [401, 429, 503]
        if has_body or has_query:
            codes.append(400)
        if has_body:
            codes += [403, 413, 415]  # 403: CSRF, for session-authenticated requests only
        elif self.method == "DELETE":
            codes.append(403)
        if self.path_regex_has_ids() or getattr(self.view, "hides_refusals", True):
            codes.append(404)
        extra = getattr(self.view, "extra_problem_statuses", ())  # a list, or a list per method
        codes += extra.get(self.method, []) if isinstance(extra, dict) else list(extra)
        return sorted(set(codes))

    def path_regex_has_ids(self) -> bool:
        return "{" in self.path

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self.problem_statuses():
            if str(code) not in responses:
                response = self._get_response_for_code(ProblemSerializer, str(code), (PROBLEM,), direction)
                response["description"] = PROBLEM_STATUSES[code]
                responses[str(code)] = response
        return responses
