"""One exception tree for the whole gateway.

Every layer raises these (``raise X(...) from e``); the HTTP layer turns them into the dialect's
error format in one place (:func:`kernel_gateway_ext.api.base.BaseHandler.write_error`).
Messages are short and never carry tracebacks, env values or secrets.
"""
from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway answers with. ``status`` is the HTTP status."""

    status: int = 500
    kind: str = "internal-error"  # a short slug; v2 uses it in its problem type URL

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.kind)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.kind


class ReplicaUnavailable(GatewayError):
    """The replica serving this kernel or session cannot be reached now; retry (another takes it over)."""

    status = 503
    kind = "replica-unavailable"


class BadRequest(GatewayError):
    """The request is malformed."""

    status = 400
    kind = "invalid-api-params"


class Unauthorized(GatewayError):
    """Missing or invalid credentials."""

    status = 401
    kind = "auth-failed"


class Forbidden(GatewayError):
    """The caller may not do this."""

    status = 403
    kind = "forbidden"


class NotFound(GatewayError):
    """No such resource (or it belongs to someone else: we never confirm existence)."""

    status = 404
    kind = "not-found"


class KernelNotFound(NotFound):
    """No such kernel."""

    kind = "kernel-not-found"


class KernelSpecNotFound(NotFound):
    """No such kernelspec."""

    kind = "kernelspec-not-found"


class Conflict(GatewayError):
    """The resource is in a state that does not allow this."""

    status = 409
    kind = "conflict"


class LimitExceeded(GatewayError):
    """A requested resource is above what the server allows."""

    status = 406
    kind = "limit-exceeded"


class TooManyKernels(GatewayError):
    """The gateway has reached its kernel limit."""

    status = 403
    kind = "too-many-kernels"


class OverCapacity(GatewayError):
    """The host's memory budget for kernels and sessions is spent; try again later."""

    status = 429
    kind = "over-capacity"


class KernelStartFailed(GatewayError):
    """The kernel could not be started."""

    status = 500
    kind = "kernel-start-failed"


class ContainerFailed(GatewayError):
    """A container could not be created or started (the container layer's one failure)."""

    status = 500
    kind = "container-failed"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


class KernelDead(GatewayError):
    """The kernel is not running."""

    status = 409
    kind = "kernel-dead"


class EngineUnavailable(GatewayError):
    """The container engine cannot be reached."""

    status = 503
    kind = "engine-unavailable"


class EngineError(GatewayError):
    """The container engine refused a call (docker's APIError, translated once in the container layer)."""

    status = 502
    kind = "engine-error"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ContainerMissing(EngineError):
    """The engine has no such container (any more)."""

    status = 404
    kind = "container-missing"


class ImageMissing(EngineError):
    """The engine has no such image."""

    status = 404
    kind = "image-missing"


class GatewayTimeout(GatewayError):
    """An operation took longer than allowed."""

    status = 504
    kind = "timeout"
