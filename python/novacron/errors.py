"""NovaCron's exception hierarchy.

Every error a client can see has a stable snake_case ``code`` (part of the wire protocol,
see ``docs/protocol.md``) and a human ``message``; ``details`` is an optional map with
machine-readable specifics. Python owns these classes; the native module raises
:class:`EngineError` (imported by the Rust layer).
"""

from __future__ import annotations

from typing import Any, ClassVar


class NovaCronError(Exception):
    """Base of every NovaCron error that maps to a wire error code."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        """The error map sent in a response: ``{"code", "message"[, "details"]}``."""
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            wire["details"] = self.details
        return wire

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message})"


class InvalidRequest(NovaCronError):
    code = "invalid_request"


class MethodNotFound(NovaCronError):
    code = "method_not_found"


class InvalidParams(NovaCronError):
    code = "invalid_params"


class Unauthenticated(NovaCronError):
    code = "unauthenticated"


class PermissionDenied(NovaCronError):
    code = "permission_denied"


class NotFound(NovaCronError):
    code = "not_found"


class AlreadyExists(NovaCronError):
    code = "already_exists"


class Conflict(NovaCronError):
    code = "conflict"


class Unavailable(NovaCronError):
    code = "unavailable"


class Timeout(NovaCronError):
    code = "timeout"


class TooLarge(NovaCronError):
    code = "too_large"


class RateLimited(NovaCronError):
    """The caller sent more calls than its rate allows; ``details.retry_after_s`` says when."""

    code = "rate_limited"


class QuotaExceeded(NovaCronError):
    """The tenant's quota (vCPUs, memory or VM count) would be exceeded."""

    code = "quota_exceeded"


class InsufficientResources(NovaCronError):
    """The host cannot hold the VM without overcommitting (the message says what is short)."""

    code = "insufficient_resources"


class MigrationFailed(NovaCronError):
    """A migration did not complete; the VM runs on the source (details say why)."""

    code = "migration_failed"


class Cancelled(NovaCronError):
    """An operation was cancelled on request (``op.cancel``)."""

    code = "cancelled"


class Internal(NovaCronError):
    code = "internal"


class ProtocolError(NovaCronError):
    """Bytes on a connection that are not valid MessagePack-RPC (the codec's own error).

    Its ``code`` is ``invalid_request``, ``too_large``, ``timeout`` (a message begun and
    not finished in time), ``overloaded`` (the daemon's budget of requests being received
    is used up) or ``too_many_connections``; the server answers it with a
    ``protocol.error`` notification and closes the connection.
    """

    code = "invalid_request"

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]
        self.decoded: list[Any] = []  # messages decoded before the bad bytes


class EngineError(ValueError):
    """Raised by ``novacron._core`` when the page engine rejects its input."""


ERRORS_BY_CODE: dict[str, type[NovaCronError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        Conflict,
        Unavailable,
        Timeout,
        TooLarge,
        InsufficientResources,
        RateLimited,
        QuotaExceeded,
        MigrationFailed,
        Cancelled,
        Internal,
    )
}


def from_wire(error: Any) -> NovaCronError:
    """Rebuilds an exception from a wire error map (used by clients)."""
    if not isinstance(error, dict):
        return Internal(f"malformed error from server: {error!r}")
    code = error.get("code")
    message = error.get("message")
    details = error.get("details")
    cls = ERRORS_BY_CODE.get(code, NovaCronError) if isinstance(code, str) else Internal
    exc = cls(str(message), details if isinstance(details, dict) else None)
    if cls is NovaCronError:
        # an error code newer than this client: keep it verbatim
        exc.code = str(code)  # type: ignore[misc]
    return exc
