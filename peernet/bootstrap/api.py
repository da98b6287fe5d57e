"""The bootstrap HTTP API (twisted.web): register, unregister, discover, health.

The resource is thin: it turns HTTP into calls on BootstrapStore and maps every
PeernetError to its status with a JSON ``{"error": {"code", "message"}}`` body.
No response ever carries a traceback.

Privacy: the access log is off (``BootstrapSite.log``) and no handler logs a
client address, so nothing about who called ``discover`` is kept anywhere.
The only use of a caller's address is the in-memory per-IP rate limit on
register/unregister, which only broadcasting peers (who publish their address
anyway) call.
"""

import io
import json
import random
from urllib.parse import parse_qs

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

import peernet
from peernet import constants
from peernet.bootstrap.store import CodeIssued, Registration
from peernet.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PeernetError,
    RateLimited,
    UnsupportedMediaType,
)
from peernet.records import (
    SIGNATURE_HEADER,
    canonical_json,
    open_signed_request,
    verify_signed_record,
)
from peernet.schemas import openapi_document

log = Logger()

PREFIX = "/api/bootstrap/"
ROUTES = {
    "register": ("POST",),
    "unregister": ("POST",),
    "discover": ("GET", "HEAD"),
    "health": ("GET", "HEAD"),
    "openapi.json": ("GET", "HEAD"),
}


class BootstrapAPI(Resource):
    isLeaf = True

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

    def render(self, request):
        request.notifyFinish().addErrback(_mark_gone, request)
        d = ensureDeferred(self._handle(request))
        d.addCallback(lambda result: _respond(request, *result))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    async def _handle(self, request):
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1")
        name = path[len(PREFIX):] if path.startswith(PREFIX) else None
        if name not in ROUTES:
            raise NotFound(f"no such endpoint: {path[:100]}")
        if method not in ROUTES[name]:
            request.setHeader("Allow", ", ".join(ROUTES[name]))
            raise MethodNotAllowed(f"{method[:10]} is not allowed on {path}; use {ROUTES[name][0]}")
        handler = getattr(self, "handle_" + name.replace(".", "_"))
        if method == "POST":
            return await handler(request, _read_json_body(request))
        return await handler(request)

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
        sample = await self.store.discover(constants.REGISTER_SAMPLE + 1, now, bootstrap_only=False)
        low, high = constants.REANNOUNCE_FRACTION
        return 200, {
            "status": "registered",
            "peer_id": reg.peer_id,
            "expires_at": outcome.expires_at,
            "reannounce_after": round(self.store.ttl * self.rng.uniform(low, high), 1),
            "bootstrap_servers": await self.store.bootstrap_nodes(),
            "peers": _RawList(
                [_signed_json(r, s) for r, s in sample if f'"peer_id":"{reg.peer_id}"' not in r]
                [: constants.REGISTER_SAMPLE]
            ),
        }

    async def handle_unregister(self, request, body):
        self._limit_ip(request)
        now = self.reactor.seconds()
        fields = open_signed_request(body, _signature(request), "UnregisterRequest", now)
        removed, released = await self.store.unregister(
            fields["peer_id"], fields["nonce"], fields.get("release_email", False), now
        )
        return 200, {"status": "unregistered", "removed": removed, "email_released": released}

    async def handle_discover(self, request):
        limit = _limit_argument(request)
        now = self.reactor.seconds()
        rows = await self.store.discover(limit, now)
        nodes = await self.store.bootstrap_nodes()
        return 200, {
            "peers": _RawList([_signed_json(r, s) for r, s in rows]),
            "bootstrap_servers": nodes,
        }

    async def handle_health(self, request):
        counts = await self.store.counts(self.reactor.seconds())
        return 200, {"status": "ok", "version": peernet.__version__, **counts}

    async def handle_openapi_json(self, request):
        return 200, _Raw(self._openapi)

    # -- helpers ----------------------------------------------------------------

    def _limit_ip(self, request):
        address = request.getClientAddress()
        key = getattr(address, "host", None) or "unix"
        if not self.ip_limiter.allow(key):
            raise RateLimited("too many requests from this address; try later")

    def _failed(self, failure, request):
        if failure.check(PeernetError):
            error = failure.value
        else:
            # A bug, not bad input: log it (without the caller's address).
            log.failure("unexpected error serving {path}", failure,
                        path=request.path.decode("latin-1")[:100])
            error = PeernetError("internal error; the request was not applied",
                                 code="internal_error")
            error.http_status = 500
        if error.http_status == 429:
            request.setHeader("Retry-After", "60")
        _respond(request, error.http_status, error.as_json())


class _Raw(bytes):
    """Bytes already encoded as JSON."""


class _RawList(list):
    """A list of JSON-encoded items (str), spliced into the response as is."""


def _encode(obj):
    if isinstance(obj, _Raw):
        return bytes(obj)
    # Splice pre-encoded records without decoding and re-encoding them.
    raw = {k: v for k, v in obj.items() if isinstance(v, _RawList)}
    plain = {k: v for k, v in obj.items() if k not in raw}
    text = json.dumps(plain, separators=(",", ":"), ensure_ascii=False)
    if raw:
        parts = [text[:-1]] if plain else ["{"]
        for i, (k, items) in enumerate(raw.items()):
            sep = "," if (plain or i) else ""
            parts.append(f'{sep}{json.dumps(k)}:[{",".join(items)}]')
        parts.append("}")
        text = "".join(parts)
    return text.encode("utf-8")


def _mark_gone(failure, request):
    request.peernet_gone = True


def _respond(request, status, obj):
    if getattr(request, "peernet_gone", False) or request.finished:
        return
    body = _encode(obj)
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Cache-Control", "no-store")
    request.setHeader("Content-Length", str(len(body)))
    request.write(body)
    request.finish()


def _signed_json(record_json, signature):
    return f'{{"record":{record_json},"signature":"{signature}"}}'


def _signature(request):
    value = request.getHeader(SIGNATURE_HEADER)
    return value.strip() if value else None


def _read_json_body(request):
    if getattr(request.content, "overflowed", False):
        raise PayloadTooLarge(
            f"the request body is larger than {constants.MAX_MESSAGE_BYTES} bytes"
        )
    ctype = (request.getHeader("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType("the request body must be sent as application/json")
    request.content.seek(0)
    body = request.content.read(constants.MAX_MESSAGE_BYTES + 1)
    if len(body) > constants.MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(
            f"the request body is larger than {constants.MAX_MESSAGE_BYTES} bytes"
        )
    if not body:
        raise BadRequest("the request body is empty")
    return body


def _limit_argument(request):
    values = parse_qs(request.uri.decode("latin-1").partition("?")[2]).get("limit")
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


class _BoundedBody:
    """A request body sink that keeps at most ``limit`` + 1 bytes.

    Twisted would otherwise buffer any body to memory or a temporary file;
    this keeps a hostile upload from costing more than the limit.
    """

    def __init__(self, limit):
        self._buffer = io.BytesIO()
        self._limit = limit
        self.overflowed = False

    def write(self, data):
        room = self._limit + 1 - self._buffer.tell()
        if len(data) > room:
            self.overflowed = True
            data = data[:max(room, 0)]
        self._buffer.write(data)

    def seek(self, *args):
        return self._buffer.seek(*args)

    def read(self, *args):
        return self._buffer.read(*args)

    def tell(self):
        return self._buffer.tell()

    def close(self):
        self._buffer.close()


class BootstrapRequest(server.Request):
    def gotLength(self, length):
        self.content = _BoundedBody(constants.MAX_MESSAGE_BYTES)
        if length is not None and length > constants.MAX_MESSAGE_BYTES:
            self.content.overflowed = True


class BootstrapSite(server.Site):
    """A Site with no access log (privacy) and no tracebacks in responses."""

    displayTracebacks = False
    requestFactory = BootstrapRequest

    def log(self, request):
        pass


def make_site(api):
    site = BootstrapSite(api, timeout=60)
    site.noisy = False
    return site
