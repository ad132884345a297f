"""Domain errors that map one-to-one to gRPC status codes.

Domain code raises these and never imports grpc; `grpc_server.handle_errors` turns them into statuses. Anything else
that escapes a handler is a bug: it becomes INTERNAL and is logged with its traceback.
"""

from __future__ import annotations


class HaloWeaveError(Exception):
    """Base class: one request fails, the service keeps serving (a recoverable error)."""

    code = "internal"  # the gRPC status name, lower case; also the `code` of a WebSocket error frame

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(HaloWeaveError):
    code = "invalid_argument"


class NotFound(HaloWeaveError):
    code = "not_found"


class PermissionDenied(HaloWeaveError):
    code = "permission_denied"


class FailedPrecondition(HaloWeaveError):
    code = "failed_precondition"


class AlreadyExists(HaloWeaveError):
    """The request was carried out before (e.g. a job the tracker has already finished): do nothing more."""

    code = "already_exists"


class DataLoss(HaloWeaveError):
    code = "data_loss"


class Unavailable(HaloWeaveError):
    code = "unavailable"


class Aborted(HaloWeaveError):
    """A newer attempt at the same work took over (e.g. a reply's stream reopened after a fault): retry from what is
    committed, never from what this attempt holds."""

    code = "aborted"


class Overloaded(HaloWeaveError):
    """No room for one more request (every slot taken, the queue at its bound): try again shortly."""

    code = "overloaded"


class Busy(HaloWeaveError):
    """The session is already doing what was asked (e.g. generating a reply): one at a time."""

    code = "busy"
