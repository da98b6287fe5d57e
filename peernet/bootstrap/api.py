"""The bootstrap HTTP API (twisted.web): register, unregister, discover, health.

The resource is thin: it turns HTTP into calls on BootstrapStore and maps every
PeernetError to its status with a JSON ``{"error": {"code", "message"}}`` body.
No response ever carries a traceback.

Privacy: the access log is off (``peernet.jsonapi.PrivateSite``) and no handler logs a
client address, so nothing about who called ``discover`` is kept anywhere.
The only use of a caller's address is the in-memory per-IP rate limit on
register/unregister, which only broadcasting peers (who publish their address
anyway) call.
"""

import json
import random

import peernet
from peernet import constants
from peernet.bootstrap.store import CodeIssued, Registration
from peernet.errors import BadRequest, BadSignature, RateLimited
from peernet.jsonapi import JSONAPI, Raw, RawList, query_arguments
from peernet.records import (
    SIGNATURE_HEADER,
    canonical_json,
    open_signed_request,
    verify_signed_record,
)
from peernet.schemas import openapi_document

PREFIX = "/api/bootstrap/"
ROUTES = {
    "register": ("POST",),
    "unregister": ("POST",),
    "discover": ("GET", "HEAD"),
    "health": ("GET", "HEAD"),
    "openapi.json": ("GET", "HEAD"),
}


class BootstrapAPI(JSONAPI):
    prefix = PREFIX
    routes = ROUTES

    def __init__(self, reactor, store, *, ip_limiter, email_limiter, mailer=None,
                 rng=None):
        super().__init__()
        self.reactor = reactor
        self.store = store
        self.ip_limiter = ip_limiter
        self.email_limiter = email_limiter
        self.mailer = mailer
        self.rng = rng or random.SystemRandom()
        self._openapi = json.dumps(openapi_document(), indent=1).encode("utf-8")

    # -- endpoints --------------------------------------------------------------

    async def handle_register(self, request, body):
        self._limit_ip(request)
        now = self.reactor.seconds()
        fields = open_signed_request(body, _signature(request), "RegisterRequest", now)
        signed = fields["signed_record"]
        record = verify_signed_record(signed)
        if record["peer_id"] != fields["peer_id"]:
            raise BadRequest("signed_record belongs to another peer than the request",
                             code="peer_mismatch")
        if not record["is_broadcasting"]:
            raise BadRequest(
                "only broadcasting peers register; a silent peer must not call register",
                code="not_broadcasting",
            )
        if not record["addresses"]:
            raise BadRequest("a registered record needs at least one address",
                             code="no_addresses")
        email = fields.get("email")
        if email is not None:
            email = email.strip().lower()
            if not self.email_limiter.allow(email):
                raise RateLimited("too many registrations for this email; try later")
        reg = Registration(
            peer_id=record["peer_id"],
            record_json=canonical_json(record).decode("utf-8"),
            signature=signed["signature"],
            version=record["version"],
            is_bootstrap=record["is_bootstrap"],
            email=email,
            email_code=fields.get("email_code"),
            nonce=fields["nonce"],
        )
        outcome = await self.store.register(reg, now)
        if isinstance(outcome, CodeIssued):
            try:
                await self.mailer.send_code(outcome.email, outcome.code)
            except Exception:
                # The code never reached anyone: forget it, so a failed
                # request leaves nothing pending behind.
                await self.store.drop_email_code(outcome.email, reg.peer_id)
                raise
            return 202, {
                "status": "verification_sent",
                "email": outcome.email,
                "expires_in": constants.EMAIL_CODE_TTL_SECONDS,
            }
        sample = self.store.discover(constants.REGISTER_SAMPLE, now, bootstrap_only=False,
                                     exclude=reg.peer_id)
        low, high = constants.REANNOUNCE_FRACTION
        return 200, {
            "status": "registered",
            "peer_id": reg.peer_id,
            "expires_at": outcome.expires_at,
            "reannounce_after": round(self.store.ttl * self.rng.uniform(low, high), 1),
            "bootstrap_servers": self.store.bootstrap_nodes(),
            "peers": RawList(sample),
        }

    async def handle_unregister(self, request, body):
        self._limit_ip(request)
        now = self.reactor.seconds()
        fields = open_signed_request(body, _signature(request), "UnregisterRequest", now)
        removed, released = await self.store.unregister(
            fields["peer_id"], fields["nonce"], fields.get("release_email", False), now
        )
        return 200, {"status": "unregistered", "removed": removed, "email_released": released}

    def handle_discover(self, request):
        limit = _limit_argument(request)
        now = self.reactor.seconds()
        return 200, {
            "peers": RawList(self.store.discover(limit, now)),
            "bootstrap_servers": self.store.bootstrap_nodes(),
        }

    async def handle_health(self, request):
        counts = await self.store.counts(self.reactor.seconds())
        return 200, {"status": "ok", "version": peernet.__version__, **counts}

    def handle_openapi_json(self, request):
        return 200, Raw(self._openapi)

    # -- helpers ----------------------------------------------------------------

    def _limit_ip(self, request):
        address = request.getClientAddress()
        key = getattr(address, "host", None) or "unix"
        if not self.ip_limiter.allow(key):
            raise RateLimited("too many requests from this address; try later")


def _signature(request):
    # Raw bytes: request.getHeader() decodes as UTF-8 and raises on anything
    # else, which would surface as a 500 instead of a clear 400.
    values = request.requestHeaders.getRawHeaders(SIGNATURE_HEADER.encode("ascii"))
    if not values:
        return None
    try:
        value = values[-1].decode("ascii")
    except UnicodeDecodeError:
        raise BadSignature(f"the {SIGNATURE_HEADER} header must be base64 (ASCII)")
    return value.strip() or None


def _limit_argument(request):
    values = query_arguments(request).get("limit")
    if not values:
        return constants.DISCOVER_DEFAULT_LIMIT
    if len(values) > 1 or not values[0].isdigit():
        raise BadRequest("limit must be one whole number", code="bad_limit")
    limit = int(values[0])
    if not 1 <= limit <= constants.DISCOVER_MAX_LIMIT:
        raise BadRequest(
            f"limit must be between 1 and {constants.DISCOVER_MAX_LIMIT}", code="bad_limit"
        )
    return limit


