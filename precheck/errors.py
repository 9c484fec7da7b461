"""Domain errors: what a command refuses, and why. Mapped to HTTP status codes only in `web/`."""


class PrecheckError(Exception):
    """Root of every error a client can cause; its message is shown to the client."""


class NotFound(PrecheckError):
    """The upload or run does not exist."""


class Invalid(PrecheckError):
    """The request's values are wrong (bad die id, slot, top cell, ...)."""


class Conflict(PrecheckError):
    """The thing exists but is in a state that refuses the command."""


class Gone(PrecheckError):
    """The run is there but retention removed the files asked for (410); the message says
    what went, when and why."""


class Expired(Invalid):
    """The upload expired and can no longer start runs."""


class NotALayout(Invalid):
    """The uploaded bytes are not GDSII, gzip-compressed GDSII or OASIS."""


class NotJson(PrecheckError):
    """A body that should be JSON came with another content type."""


class TooLarge(PrecheckError):
    """The upload is bigger than `server.max_upload_mb`."""


class NoRoom(PrecheckError):
    """Storing it would leave the storage with less free space than `server.min_free_mb`."""


class TooMany(PrecheckError):
    """The key has as many runs waiting as `server.max_queued_per_owner` allows, or as many
    running as `server.max_running_per_owner` allows."""


class PreflightFailed(PrecheckError):
    """The layout fails pre-flight checks the precheck would fail it on; `checks` lists them."""

    def __init__(self, message: str, checks: tuple[object, ...]) -> None:
        super().__init__(message)
        self.checks = checks


class TargetRefused(Invalid):
    """A notification target the operator does not allow (`[notify] allowed_hosts`,
    `allowed_email_domains`): a 400 like any bad value, since 422 tells a client that the
    layout fails pre-flight."""
