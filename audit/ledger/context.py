"""The request facts an audit event records, taken from a Django or DRF request."""
from portal.request_context import session_digest


def request_context(request) -> dict:
    token = getattr(request, "api_token", None)
    session = getattr(request, "session", None)
    return {
        "client_ip": getattr(request, "client_ip", None),
        "user_agent": request.META.get("HTTP_USER_AGENT", "")[:512],
        "request_id": getattr(request, "request_id", ""),
        "auth_method": "token" if token is not None else ("session" if session is not None and session.session_key else "anonymous"),
        "token_id": token.pk if token is not None else None,
        "session_digest": session_digest(session.session_key) if token is None and session is not None else "",
    }


def command_context(command_name: str) -> dict:
    return {"auth_method": "cli", "user_agent": f"manage.py {command_name}"[:512]}
