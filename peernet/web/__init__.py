"""The peer's web dashboard, served on the control endpoint next to the API.

Routes (everything else under /api/ goes to the control API):

* ``GET /`` (and ``/dashboard``): the dashboard with a valid session cookie,
  otherwise a login form asking for the control token.
* ``GET /login?token=TOKEN`` or ``POST /login`` (form field ``token``): on the
  right token, sets the session cookie (HttpOnly, SameSite=Strict) and
  redirects to ``/``; on a wrong one, the login form again with a clear
  message (status 401).  The token is never echoed back.
* ``POST /logout`` (with ``X-Peernet: 1``): clears the cookie.
* ``GET /dashboard/NAME``: the static files of this package (HTML, CSS,
  vanilla JS; nothing is ever fetched from the internet).

The cookie's value is derived from the token (see ControlAPI.session_value),
and the control API accepts it instead of the Bearer header; POSTs
authenticated by it must carry ``X-Peernet: 1`` (CSRF protection: a
cross-site form cannot send a custom header, and SameSite=Strict keeps the
cookie off cross-site requests anyway).
"""

import os
from urllib.parse import parse_qs

from twisted.web.resource import Resource

from peernet.control.api import CSRF_HEADER, SESSION_COOKIE
from peernet.jsonapi import header

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
#: Every page: no inline scripts, nothing from elsewhere, no framing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
MAX_FORM_BYTES = 4096

LOGIN_MESSAGES = {
    None: "",
    "wrong": "That token is not right. Copy it again from control.token in the peer's "
             "state directory.",
    "missing": "Enter the control token to open the dashboard.",
    "out": "You are logged out.",
}


def _load_static():
    files = {}
    for name in sorted(os.listdir(STATIC_DIR)):
        ext = os.path.splitext(name)[1]
        if ext in CONTENT_TYPES and not name.startswith("."):
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                files[name] = (CONTENT_TYPES[ext], f.read())
    return files


def _secure_headers(request):
    request.setHeader("Content-Security-Policy", CSP)
    request.setHeader("X-Content-Type-Options", "nosniff")
    request.setHeader("X-Frame-Options", "DENY")
    request.setHeader("Referrer-Policy", "no-referrer")
    request.setHeader("Cache-Control", "no-store")


class DashboardRoot(Resource):
    """The control site's root: the dashboard, its login, and /api/* (the API)."""

    isLeaf = True

    def __init__(self, api):
        super().__init__()
        self.api = api
        self.static = _load_static()

    def render(self, request):
        path = request.path.decode("latin-1")
        if path.startswith(self.api.prefix):
            return self.api.render(request)
        method = request.method
        if path in ("/", "/dashboard", "/dashboard/") and method in (b"GET", b"HEAD"):
            if self.api.has_session(request):
                return self._file(request, "index.html")
            return self._login_page(request, None, 200)
        if path == "/login":
            return self._login(request)
        if path == "/logout" and method == b"POST":
            return self._logout(request)
        if path.startswith("/dashboard/") and method in (b"GET", b"HEAD"):
            name = path[len("/dashboard/"):]
            if name in self.static and name not in ("index.html", "login.html"):
                return self._file(request, name)
        if path == "/favicon.ico":
            request.setResponseCode(204)
            return b""
        return self._plain(request, 404, "Not found. The dashboard is at /.")

    # -- pages ------------------------------------------------------------------------

    def _file(self, request, name):
        ctype, data = self.static[name]
        _secure_headers(request)
        request.setHeader("Content-Type", ctype)
        request.setHeader("Content-Length", str(len(data)))
        return b"" if request.method == b"HEAD" else data

    def _login_page(self, request, reason, status):
        ctype, data = self.static["login.html"]
        message = LOGIN_MESSAGES[reason].encode()
        data = data.replace(b"<!--MESSAGE-->", message)
        if reason == "wrong":
            data = data.replace(b'class="message"', b'class="message error"')
        request.setResponseCode(status)
        _secure_headers(request)
        request.setHeader("Content-Type", ctype)
        request.setHeader("Content-Length", str(len(data)))
        return data

    def _plain(self, request, status, text):
        request.setResponseCode(status)
        _secure_headers(request)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return text.encode()

    # -- session ----------------------------------------------------------------------

    def _login(self, request):
        if request.method == b"GET":
            values = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        elif request.method == b"POST":
            ctype = header(request, "Content-Type").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                return self._plain(request, 415, "Send the login form as a web form.")
            request.content.seek(0)
            body = request.content.read(MAX_FORM_BYTES + 1)
            if len(body) > MAX_FORM_BYTES:
                return self._plain(request, 413, "The form is too large.")
            values = parse_qs(body.decode("latin-1"))
        else:
            request.setHeader("Allow", "GET, POST")
            return self._plain(request, 405, "Use GET or POST.")
        given = (values.get("token") or [""])[0].strip()
        if not given:
            return self._login_page(request, "missing", 200 if request.method == b"GET" else 401)
        if not self.api.check_token(given):
            return self._login_page(request, "wrong", 401)
        request.addCookie(SESSION_COOKIE, self.api.session_value(), path=b"/",
                          httpOnly=True, sameSite="strict")
        return self._redirect(request, b"/")

    def _logout(self, request):
        if header(request, CSRF_HEADER) != "1":
            return self._plain(request, 403, f"Logging out needs the header {CSRF_HEADER}: 1.")
        request.addCookie(SESSION_COOKIE, b"", path=b"/", httpOnly=True, sameSite="strict",
                          max_age=b"0", expires=b"Thu, 01 Jan 1970 00:00:00 GMT")
        request.setResponseCode(204)
        _secure_headers(request)
        return b""

    def _redirect(self, request, location):
        # 303: the browser follows with a GET, and the token leaves the address bar.
        request.setResponseCode(303)
        _secure_headers(request)
        request.setHeader("Location", location)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return b"Logged in: see /\n"


def dashboard_root(api):
    """The resource to serve on the control endpoint: dashboard + API."""
    return DashboardRoot(api)
