"""A small JSON API resource shared by the bootstrap API and the peer's
control API: routing, one error shape, bounded bodies, no access log.

Every PeernetError maps to its status with ``{"error": {"code", "message"}}``;
any other exception is a bug: it is logged (without the caller's address) and
answered 500 without a traceback.
"""

import inspect
import io
import json
from urllib.parse import parse_qs

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from peernet import constants
from peernet.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PeernetError,
    UnsupportedMediaType,
)

log = Logger()


#: Returned by a handler that writes its own streaming response.
STREAMING = object()


class JSONAPI(Resource):
    """Routes ``PREFIX + name`` to ``handle_<name>(request[, body])``.

    Subclasses set ``prefix`` and ``routes`` ({name: (methods...)}); POST
    handlers get the raw JSON body bytes; handlers return (status, object).
    ``authorize(request)`` runs before every handler.
    """

    isLeaf = True
    prefix = "/api/"
    routes = {}

    def render(self, request):
        # Handlers may be plain functions (answered within this call: the
        # fast path that discover takes) or coroutines (answered later).
        try:
            result = self._dispatch(request)
        except Exception:
            self._failed(Failure(), request)
            return server.NOT_DONE_YET
        if result is STREAMING:
            return server.NOT_DONE_YET
        if not inspect.isawaitable(result):
            respond(request, *result)
            return server.NOT_DONE_YET
        request.notifyFinish().addErrback(_mark_gone, request)
        d = ensureDeferred(result)
        d.addCallback(lambda result: respond(request, *result))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def authorize(self, request):
        pass

    def _dispatch(self, request):
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1")
        # Authorize first: without the token, not even the list of endpoints shows.
        self.authorize(request)
        name = path[len(self.prefix):] if path.startswith(self.prefix) else None
        if name not in self.routes:
            raise NotFound(f"no such endpoint: {path[:100]}")
        if method not in self.routes[name]:
            request.setHeader("Allow", ", ".join(self.routes[name]))
            raise MethodNotAllowed(
                f"{method[:10]} is not allowed on {path}; use {self.routes[name][0]}")
        handler = getattr(self, "handle_" + name.replace(".", "_").replace("/", "_"))
        if method == "POST":
            return handler(request, read_json_body(request))
        return handler(request)

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
        respond(request, error.http_status, error.as_json())


def query_arguments(request):
    return parse_qs(request.uri.decode("latin-1").partition("?")[2])


class Raw(bytes):
    """Bytes already encoded as JSON."""


class RawList(list):
    """A list of JSON-encoded items (str), spliced into the response as is."""


def _encode(obj):
    if isinstance(obj, Raw):
        return bytes(obj)
    # Splice pre-encoded records without decoding and re-encoding them.
    raw = {k: v for k, v in obj.items() if isinstance(v, RawList)}
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


def respond(request, status, obj):
    if getattr(request, "peernet_gone", False) or request.finished:
        return
    body = _encode(obj)
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Cache-Control", "no-store")
    request.setHeader("Content-Length", str(len(body)))
    request.write(body)
    request.finish()


def header(request, name):
    """A request header as text, "" when absent.

    ``request.getHeader`` decodes as UTF-8 and raises on other bytes, which
    turned a garbled header into a 500; header bytes are latin-1 by HTTP's
    rules, which decodes anything.
    """
    values = request.requestHeaders.getRawHeaders(name.encode("ascii"))
    if not values:
        return ""
    value = values[-1]
    return value.decode("latin-1") if isinstance(value, bytes) else value


def read_json_body(request):
    if getattr(request.content, "overflowed", False):
        raise PayloadTooLarge(
            f"the request body is larger than {constants.MAX_MESSAGE_BYTES} bytes"
        )
    ctype = header(request, "Content-Type").split(";")[0].strip().lower()
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


class BoundedRequest(server.Request):
    def gotLength(self, length):
        self.content = _BoundedBody(constants.MAX_MESSAGE_BYTES)
        if length is not None and length > constants.MAX_MESSAGE_BYTES:
            self.content.overflowed = True


class PrivateSite(server.Site):
    """A Site with no access log (privacy), bounded bodies, no tracebacks."""

    displayTracebacks = False
    requestFactory = BoundedRequest

    def log(self, request):
        pass


def make_site(resource):
    site = PrivateSite(resource, timeout=60)
    site.noisy = False
    return site
