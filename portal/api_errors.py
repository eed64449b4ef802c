"""API errors as RFC 9457 problem details (application/problem+json)."""
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

PROBLEM = "application/problem+json"


def problem(status_code: int, detail, *, title: str | None = None, **extra) -> dict:
    body = {"type": "about:blank", "title": title or _title(status_code), "status": status_code}
    if isinstance(detail, (dict, list)):
        body["detail"] = "The request is invalid."
        body["errors"] = detail
    else:
        body["detail"] = str(detail)
    body.update(extra)
    return body


def _title(status_code: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"


class Problem(exceptions.APIException):
    """An API error with a status, a message a person understands, and extra members."""

    def __init__(self, status_code: int, detail: str, **extra):
        super().__init__(detail)
        self.status_code = status_code
        self.extra = extra


def problem_exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, RequestDataTooBig):
        exc = Problem(413, f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
                      limit="DATA_UPLOAD_MAX_MEMORY_SIZE")
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
    extra = dict(getattr(exc, "extra", {}))
    request = context.get("request")
    if request is not None and getattr(request._request, "request_id", None):
        extra["request_id"] = request._request.request_id
    body = problem(response.status_code, detail, **extra)
    new = Response(body, status=response.status_code, headers=dict(response.items()), content_type=PROBLEM)
    return new


def problem_response(status_code: int, detail: str, **extra) -> JsonResponse:
    return JsonResponse(problem(status_code, detail, **extra), status=status_code, content_type=PROBLEM)


def is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path.startswith("/v1/")


def api_or_page_404(request, exception=None):
    if is_api_path(request.path):
        return problem_response(status.HTTP_404_NOT_FOUND, "Not found.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def api_or_page_500(request):
    if is_api_path(request.path):
        return problem_response(500, "Internal error; it has been logged.",
                                request_id=getattr(request, "request_id", ""))
    from django.views.defaults import server_error

    return server_error(request)
