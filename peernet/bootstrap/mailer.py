"""Email-verification codes sent over SMTP (``twist bootstrap --smtp URL``).

The bootstrap binds an email address to a peer_id only after the peer proves
it reads that mailbox: the server mails an 8-digit code and the peer repeats
its registration with it.  This module only delivers the code; generating,
storing and checking codes is the store's business.

URL forms::

    smtp://host                      port 25, STARTTLS used when offered
    smtp://user:password@host:587    authenticates (see below)
    smtps://user:password@host       implicit TLS, port 465 by default

Credentials and any reserved characters in them are percent-encoded.  A
password is never sent in clear over the network: with credentials and a host
that is not loopback, ``smtp://`` requires STARTTLS (``smtps://`` is TLS from
the first byte).  TLS always checks the server certificate against the system
CAs and the host name.

Every failure is a :class:`ServiceUnavailable` with one sentence (mapped to a
503 by the API, so the peer can retry); the URL's password never appears in
an error or a log line.
"""

import email.utils
import ipaddress
import re
from email.message import EmailMessage
from io import BytesIO
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, error as internet_error
from twisted.logger import Logger
from twisted.python.failure import Failure

from peernet import constants
from peernet.errors import BadRequest, ConfigError, ServiceUnavailable

DEFAULT_SENDER = "peernet-bootstrap@localhost"
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
#: Seconds allowed for the whole exchange with the mail server.
DEFAULT_TIMEOUT = 30

_CODE = re.compile(r"^[0-9]{8}$")
# Same shape the API schema accepts, restricted to ASCII: SMTPUTF8 is not
# negotiated, so a non-ASCII address could not be delivered anyway.
_ADDRESS = re.compile(r"^[!-?A-~]+@[!-?A-~]+\.[!-?A-~]+$")  # printable ASCII minus '@'

log = Logger()


def _smtp():
    # twisted.mail.smtp imports the global reactor when it is imported (a
    # default argument of its sendmail()), so load it only when mail is sent,
    # by which time the application has chosen its reactor.
    from twisted.mail import smtp

    return smtp


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bad_url(reason):
    return ConfigError(f"the --smtp URL is not valid: {reason}")


def parse_smtp_url(url):
    """Split an ``smtp://`` or ``smtps://`` URL.

    Returns ``(scheme, host, port, user, password)`` (user and password are
    None when absent).  Raises :class:`ConfigError` (one sentence, no
    password in it) when the URL is unusable.
    """
    if not isinstance(url, str) or not url:
        raise _bad_url("it is empty")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad_url("the port must be a number from 1 to 65535")
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _bad_url("it must start with smtp:// or smtps://")
    host = parts.hostname
    if not host:
        raise _bad_url("it names no host (expected smtp://[user:password@]host[:port])")
    if port == 0:
        raise _bad_url("the port must be a number from 1 to 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _bad_url("it must not have a path, query or fragment")
    if any(c.isspace() for c in url):
        raise _bad_url("it must not contain spaces")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if user is not None or password is not None:
        if not user:
            raise _bad_url("it gives a password but no user name")
        if not password:
            raise _bad_url("it gives a user name but no password")
    return scheme, host, port or DEFAULT_PORTS[scheme], user, password


def _check_sender(sender):
    if not isinstance(sender, str) or not re.match(r"^[!-?A-~]+@[!-?A-~]+$", sender):
        raise ConfigError(f"the mail sender {sender!r} is not an ASCII address like name@host")
    return sender


class SMTPMailer:
    """Sends verification codes through one SMTP server.

    Build it with :meth:`from_url`; ``send_code`` is the only method the
    bootstrap calls.  ``reactor`` must provide TCP (and SSL for smtps).
    """

    def __init__(self, reactor, host, port, *, sender=DEFAULT_SENDER, user=None,
                 password=None, implicit_tls=False, timeout=DEFAULT_TIMEOUT,
                 tls_options=None):
        self._reactor = reactor
        self.host = host
        self.port = port
        self.sender = _check_sender(sender)
        self.user = user
        self._password = password
        self.implicit_tls = implicit_tls
        self.timeout = timeout
        # Client TLS options (a test may pass its own trust root); None means
        # system CAs with the SMTP host name checked.
        self._tls_options = tls_options

    @classmethod
    def from_url(cls, reactor, url, sender=DEFAULT_SENDER, *, timeout=DEFAULT_TIMEOUT,
                 tls_options=None):
        scheme, host, port, user, password = parse_smtp_url(url)
        return cls(reactor, host, port, sender=sender, user=user, password=password,
                   implicit_tls=(scheme == "smtps"), timeout=timeout,
                   tls_options=tls_options)

    def __repr__(self):
        scheme = "smtps" if self.implicit_tls else "smtp"
        user = f"{self.user}:***@" if self.user else ""
        return f"<SMTPMailer {scheme}://{user}{self.host}:{self.port}>"

    # -- sending -----------------------------------------------------------------

    def send_code(self, address, code):
        """Mail ``code`` (8 digits) to ``address``.

        Returns a Deferred firing with None once the server accepted the
        message, or failing with ServiceUnavailable (server down, timeout,
        refusal) or BadRequest (an address that cannot be mailed).
        """
        if not isinstance(code, str) or not _CODE.match(code):
            return defer.fail(ValueError("a verification code is 8 decimal digits"))
        if not isinstance(address, str) or len(address) > 254 or not _ADDRESS.match(address):
            return defer.fail(BadRequest(
                f"the email address {address!r} cannot be mailed (ASCII name@domain only)",
                code="invalid_email",
            ))
        message = self._message(address, code)
        d = self._send(address, message)
        d.addCallbacks(self._sent, self._failed, callbackArgs=(address,))
        return d

    def _message(self, address, code):
        minutes = constants.EMAIL_CODE_TTL_SECONDS // 60
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = address
        msg["Subject"] = f"peernet verification code {code}"
        msg["Date"] = email.utils.formatdate(self._reactor.seconds(), localtime=False)
        msg["Message-ID"] = email.utils.make_msgid(
            domain=self.sender.rpartition("@")[2] or "localhost"
        )
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(
            f"Your peernet verification code is {code}; it expires in {minutes} minutes.\n"
            "\n"
            "If you did not ask for it, ignore this message.\n"
        )
        # The SMTP client turns "\n" into CRLF itself, so keep LF line ends.
        return msg.as_bytes()

    def _send(self, address, message):
        result = defer.Deferred()
        smtp = _smtp()
        secure_needed = bool(self.user) and not self.implicit_tls and not _is_loopback(self.host)
        factory = smtp.ESMTPSenderFactory(
            self.user.encode("utf-8") if self.user else None,
            self._password.encode("utf-8") if self._password else None,
            self.sender,
            [address],
            BytesIO(message),
            result,
            retries=0,  # the peer retries its registration; we answer at once
            timeout=self.timeout,
            contextFactory=self._tls_options,
            heloFallback=not self.user,
            requireAuthentication=bool(self.user),
            requireTransportSecurity=secure_needed,
            hostname=self.host,
        )
        if self.implicit_tls:
            options = self._tls_options
            if options is None:
                from twisted.internet.ssl import optionsForClientTLS

                options = optionsForClientTLS(self.host)
            connector = self._reactor.connectSSL(
                self.host, self.port, factory, options, timeout=self.timeout
            )
        else:
            connector = self._reactor.connectTCP(
                self.host, self.port, factory, timeout=self.timeout
            )

        def cancel(_):
            factory.sendFinished = True
            if factory.currentProtocol is not None:
                factory.currentProtocol.transport.abortConnection()
            else:
                connector.disconnect()

        outer = defer.Deferred(cancel)

        def forward(outcome):
            # The SMTP client may report more than once (an idle timeout and
            # then the lost connection); only the first outcome counts.
            if not outer.called:
                if isinstance(outcome, Failure):
                    outer.errback(outcome)
                else:
                    outer.callback(outcome)
            return None

        result.addBoth(forward)
        outer.addTimeout(self.timeout, self._reactor)
        return outer

    def _sent(self, _result, address):
        log.info("verification code mailed to {domain}", domain=address.rpartition("@")[2])
        return None

    def _failed(self, failure):
        smtp = _smtp()
        reason = _describe(failure)
        log.warn("could not mail a verification code via {host}:{port}: {reason}",
                 host=self.host, port=self.port, reason=reason)
        if failure.check(smtp.SMTPClientError) and not failure.check(
            smtp.SMTPConnectError, smtp.SMTPTimeoutError
        ):
            # The server answered but said no (bad recipient, failed login...).
            raise ServiceUnavailable(f"the mail server refused the message: {reason}")
        raise ServiceUnavailable(f"the mail server could not be reached: {reason}")


def _describe(failure):
    """A short, password-free reason for a failed send."""
    smtp = _smtp()
    value = failure.value
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return "no answer in time"
    if failure.check(smtp.SMTPClientError):
        cause = value.__cause__
        if failure.check(smtp.SMTPConnectError) and cause is not None:
            return _connection_reason(cause)
        resp = value.resp
        if isinstance(resp, bytes):
            resp = resp.decode("utf-8", "replace")
        resp = " ".join(str(resp).split())[:200]
        if value.code and value.code > 0:
            return f"{value.code} {resp}"
        return resp
    return _connection_reason(value)


def _connection_reason(value):
    if isinstance(value, internet_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, internet_error.TimeoutError):
        return "connection timed out"
    if isinstance(value, internet_error.DNSLookupError):
        return "the host name does not resolve"
    text = " ".join(str(value).split())
    return text[:200] or value.__class__.__name__
