"""API errors and the one middleware that turns every failure into RFC 9457 problem+json.

    ApiError (status, code)
    ├── 400 BadRequest         malformed_json, validation_failed, invalid_parameter, invalid_cursor, ...
    ├── 401 Unauthenticated    unauthenticated, invalid_token, token_expired
    ├── 403 Forbidden          forbidden
    ├── 404 NotFoundError      not_found, product_not_found, warehouse_not_found, reservation_not_found
    ├── 409 ConflictError      sku_taken, insufficient_stock, invalid_transition, ...
    ├── 412 PreconditionFailed precondition_failed
    ├── 413 PayloadTooLarge    body_too_large
    ├── 415 UnsupportedMedia   unsupported_media_type
    ├── 422 Unprocessable      idempotency_key_reused
    ├── 429 TooManyRequests    rate_limited, too_many_connections
    └── 503 ServiceUnavailable store_unavailable, broker_unavailable, rate_limiter_unavailable, ...

Handlers raise; only :func:`error_middleware` formats. Store exceptions are mapped here too, so a
handler never translates them itself. The codes are stable: clients switch on ``code``, never on
``title`` or ``detail``. The full table is in docs/errors.md. A request the HTTP parser refuses never
reaches a middleware: hub/http_errors.py answers it (400 ``malformed_request``) in the same format.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from hub.keys import SETTINGS
from hub.pii import PiiError
from storage import errors as store_errors
from sync.broker import BrokerError

log = logging.getLogger(__name__)
PROBLEM_TYPE = "https://synchub.dev/errors/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
_RESERVED_MEMBERS = frozenset({"type", "title", "status", "code", "detail", "errors", "instance"})


class ApiError(Exception):
    status = 500
    code = "internal_error"
    title = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra


class BadRequest(ApiError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthenticated(ApiError):
    status, code, title = 401, "unauthenticated", "Authentication required"


class Forbidden(ApiError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFoundError(ApiError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(ApiError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class ConflictError(ApiError):
    status, code, title = 409, "conflict", "Conflict"


class PreconditionFailed(ApiError):
    status, code, title = 412, "precondition_failed", "Precondition failed"


class PayloadTooLarge(ApiError):
    status, code, title = 413, "body_too_large", "Request body too large"


class UnsupportedMedia(ApiError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class Unprocessable(ApiError):
    status, code, title = 422, "unprocessable", "Unprocessable request"


class RequestTimeout(ApiError):
    status, code, title = 408, "body_timeout", "Request timeout"


class TooManyRequests(ApiError):
    status, code, title = 429, "rate_limited", "Too many requests"


class ServiceUnavailable(ApiError):
    status, code, title = 503, "service_unavailable", "Service unavailable"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    # Extension members never shadow the standard ones.
    body.update({k: v for k, v in (extra or {}).items() if k not in _RESERVED_MEMBERS})
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def from_store_error(exc: store_errors.StoreError) -> ApiError:
    details: dict[str, Any] = {
        k: v for k, v in exc.details.items() if isinstance(v, str | int | float | bool)
    }
    if isinstance(exc, store_errors.NotFound):
        resource = exc.details.get("resource", "resource")
        return NotFoundError(exc.message, code=f"{resource}_not_found", **details)
    if isinstance(exc, store_errors.VersionMismatch):
        return PreconditionFailed(exc.message, **details)
    if isinstance(exc, store_errors.Conflict):
        details.pop("code", None)
        return ConflictError(exc.message, code=exc.details.get("code", "conflict"), **details)
    if isinstance(exc, store_errors.InsufficientStock):
        return ConflictError(exc.message, code="insufficient_stock", **details)
    if isinstance(exc, store_errors.InvalidTransition):
        return ConflictError(exc.message, code="invalid_transition", **details)
    if isinstance(exc, store_errors.IdempotencyMismatch):
        return Unprocessable(exc.message, code="idempotency_key_reused")
    if isinstance(exc, store_errors.StoreUnavailable):
        log.error("store unavailable: %s", exc)
        return ServiceUnavailable("the database is unavailable", code="store_unavailable")
    log.error("store error: %s", exc)
    return ApiError("the database refused the operation", code="store_error")


_HTTP_CODES = {
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("body_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except store_errors.StoreError as exc:
        error = from_store_error(exc)
    except PiiError as exc:
        # Personal data the hub's keys cannot open (hub/pii.py): a configuration fault, named, never
        # the data.
        log.error("personal data unreadable on %s %s: %s", request.method, request.path, exc.message)
        error = ApiError(exc.message, code=exc.code)
    except BrokerError as exc:
        log.warning("broker unavailable: %s", exc)
        error = ServiceUnavailable(
            "the event broker is unavailable; retry shortly", code="broker_unavailable"
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, title = _HTTP_CODES.get(exc.status, (f"http_{exc.status}", exc.reason))
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        detail = exc.text or exc.reason
        if exc.status == 413:
            detail = f"the request body exceeds the limit of {request.app[SETTINGS].max_body_bytes} bytes"
        elif exc.status == 404:
            detail = f"no route for {request.path}"
        return problem_response(exc.status, code, title, detail, headers=headers)
    except ConnectionResetError:
        # The client went away mid-request (an aborted upload, a closed tab): not a server error, and
        # nobody is left to read an answer.
        log.debug("client went away during %s %s", request.method, request.path)
        return problem_response(400, "client_disconnected", "Bad request", "the client closed the connection")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        error = ApiError("an unexpected error occurred")
    headers = error.headers
    if error.status == 401 and "WWW-Authenticate" not in headers:
        # RFC 9110: every 401 carries a challenge; RFC 6750 names the bearer error.
        challenge = "Bearer" if error.code == "unauthenticated" else 'Bearer error="invalid_token"'
        headers = {**headers, "WWW-Authenticate": challenge}
    return problem_response(
        error.status,
        error.code,
        error.title,
        error.detail,
        errors=error.errors,
        headers=headers,
        extra=error.extra,
    )
