"""Errors of the `tether server` clients (`tether.client`, `tether.console`).

The server answers every refusal with ``{"error": {"code", "message"}}`` (docs/api.md). Each
``code`` maps to one exception class below, so callers catch what they can handle and never
match on message text:

=========================  ==========================================================
exception                  codes (HTTP status)
=========================  ==========================================================
``Unauthorized``           ``unauthorized`` (401)
``Forbidden``              ``forbidden``, ``forbidden_origin`` (403)
``NotFound``               ``not_found`` (404)
``Conflict``               ``serial_taken``, ``dongle_in_group``, ``dongle_in_use``,
                           ``conflict`` (409)
``InvalidRequest``         ``bad_request``, ``malformed_json``, ``invalid_body``,
                           ``same_dongle``, ``unknown_dongle``, ``unknown_command``,
                           ``invalid_params``, ``payload_too_large``,
                           ``unsupported_media_type``, ``method_not_allowed`` (4xx)
``CommandFailed``          ``command_failed`` (502, a SOVD resource's command failed), and
                           a ``failed`` event on a command's response stream
``Unavailable``            ``unavailable``, ``not_ready`` (503): retry later
``ServerFault``            ``internal`` (5xx)
``ApiError``               any other code (the base class of all of the above)
=========================  ==========================================================

``ConnectionFailed`` is raised when the server cannot be reached or the connection breaks;
``WaitTimeout`` (also a ``TimeoutError``) when waiting for a command ran out of time. All are
subclasses of ``ClientError``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

__all__ = [
    "ApiError",
    "ClientError",
    "CommandFailed",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "ServerFault",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "api_error",
]


class ClientError(Exception):
    """Base class of every error of the `tether server` clients."""


class ConnectionFailed(ClientError):
    """The server could not be reached, or the connection broke."""


class ApiError(ClientError):
    """The server refused a request: ``status`` (HTTP), ``code`` (stable, documented) and
    ``message`` (for humans)."""

    #: Whether retrying the same request later can succeed.
    retryable = False

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Unauthorized(ApiError):
    """A missing, malformed, unknown or revoked token, or a token of the wrong kind."""


class Forbidden(ApiError):
    """The token may not do this."""


class NotFound(ApiError):
    """No such record, or one that is not the caller's (the server does not tell which)."""


class Conflict(ApiError):
    """The request conflicts with stored state (a serial of another user, a dongle already in
    a group)."""


class InvalidRequest(ApiError):
    """A request the server refuses as such (bad JSON, wrong shape, refused values)."""


class Unavailable(ApiError):
    """The server is busy or not ready: retry later."""

    retryable = True


class ServerFault(ApiError):
    """The server failed (details are only in its log)."""


class CommandFailed(ApiError):
    """A vehicle command failed: ``message`` is its ``error_message`` (``vehicle offline``,
    ``requestOutOfRange``, ``timeout``, ``interrupted: ...``); ``command_id`` names it when
    known."""

    def __init__(self, command_id: Optional[str], message: str, status: int = 502) -> None:
        super().__init__(status, "command_failed", message)
        self.command_id = command_id


class WaitTimeout(ClientError, TimeoutError):
    """Waiting for a command's final answer ran out of time (the command may still finish)."""


_BY_CODE: dict[str, type[ApiError]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "serial_taken": Conflict,
    "dongle_in_group": Conflict,
    "dongle_in_use": Conflict,
    "forbidden_origin": Forbidden,
    "unknown_command": InvalidRequest,
    "invalid_params": InvalidRequest,
    "conflict": Conflict,
    "bad_request": InvalidRequest,
    "malformed_json": InvalidRequest,
    "invalid_body": InvalidRequest,
    "same_dongle": InvalidRequest,
    "unknown_dongle": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "unsupported_media_type": InvalidRequest,
    "method_not_allowed": InvalidRequest,
    "unavailable": Unavailable,
    "not_ready": Unavailable,
    "internal": ServerFault,
}

_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    503: Unavailable,
}


def api_error(status: int, body: bytes) -> ApiError:
    """The exception for an error response: by its JSON ``code``, else by status."""
    code: Optional[str] = None
    message = body.decode("utf-8", "replace")[:500]
    try:
        parsed: Any = json.loads(body)
        error = parsed["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    if code == "command_failed":
        return CommandFailed(None, message, status)
    cls = _BY_CODE.get(code or "")
    if cls is None:
        if status in _BY_STATUS:
            cls = _BY_STATUS[status]
        elif 400 <= status < 500:
            cls = InvalidRequest
        elif status >= 500:
            cls = ServerFault
        else:
            cls = ApiError
    return cls(status, code or f"http_{status}", message)
