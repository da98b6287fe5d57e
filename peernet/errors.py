"""One exception hierarchy for peernet.

Each error carries a stable machine-readable ``code``, the HTTP status it maps
to when raised inside an API request, and the process exit status it maps to
when it stops a command.  Those three mappings live here and nowhere else.
"""


class PeernetError(Exception):
    """Base of every error peernet raises on purpose.

    ``str(err)`` is one sentence meant for a person; ``code`` is for programs.
    """

    code = "error"
    http_status = 400
    exit_status = 1

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def as_json(self):
        return {"error": {"code": self.code, "message": self.message}}


class ConfigError(PeernetError):
    """A command-line option or configuration value is wrong."""

    code = "bad_config"
    exit_status = 2


class IdentityError(PeernetError):
    """The node's key or certificate is missing, unreadable or corrupt."""

    code = "bad_identity"
    exit_status = 3


class BadRequest(PeernetError):
    code = "bad_request"
    http_status = 400


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaType(BadRequest):
    code = "unsupported_media_type"
    http_status = 415


class BadSignature(BadRequest):
    code = "bad_signature"
    http_status = 401


class StaleTimestamp(BadRequest):
    code = "stale_timestamp"
    http_status = 400


class ReplayedNonce(BadRequest):
    code = "replayed_nonce"
    http_status = 409


class Conflict(BadRequest):
    code = "conflict"
    http_status = 409


class NotFound(BadRequest):
    code = "not_found"
    http_status = 404


class MethodNotAllowed(BadRequest):
    code = "method_not_allowed"
    http_status = 405


class RateLimited(BadRequest):
    code = "rate_limited"
    http_status = 429


class ServiceUnavailable(PeernetError):
    """The server cannot take the request now (for example, its mailer is down).

    Mapped to 503: the request was valid and nothing was written.
    """

    code = "unavailable"
    http_status = 503


class BootstrapClientError(PeernetError):
    """A bootstrap server could not be reached or answered with an error."""

    code = "bootstrap_unreachable"
    exit_status = 4
