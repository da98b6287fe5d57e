"""What `twist bootstrap` / `twist peer` share: option parsing that reports a
bad value in one line, and start-up failure reporting without tracebacks."""

import os
import sys
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from peernet.errors import ConfigError

log = Logger()


def die(command, message, status=2):
    """Print ``command: error: message`` on stderr and exit (before the reactor runs)."""
    sys.stderr.write(f"{command}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)


class Options(usage.Options):
    """usage.Options whose errors are one line and a non-zero exit status."""

    command = "twist"

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            die(self.command, f"{e} (see '{self.command} --help')")
        except ConfigError as e:
            die(self.command, str(e))


def check_endpoint(reactor, description):
    """Parse a server endpoint string now, so a typo is an option error."""
    try:
        return serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"bad endpoint {description!r}: {e or 'unknown endpoint type'}")


def check_http_url(url, what):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not an http:// or https:// URL")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{what} {url!r} has a bad port")
    return url.rstrip("/")


class ListeningService(Service):
    """Listen on an endpoint; if that fails, say so in one line and exit 1.

    twist starts services before the reactor runs, and TCP, SSL and UNIX
    endpoints fail synchronously (address in use, permission denied), so the
    common failures exit before anything else happens.  A later failure stops
    the reactor and the process exits non-zero.
    """

    def __init__(self, reactor, command, description, factory):
        self.reactor = reactor
        self.command = command
        self.description = description
        self.factory = factory
        self.port = None
        #: optional callable(port), called once listening
        self.on_listening = None

    def startService(self):
        super().startService()
        result = []
        d = serverFromString(self.reactor, self.description).listen(self.factory)
        d.addBoth(result.append)
        if result:
            self._listened(result[0], synchronous=True)
        else:
            d.addCallback(self._listened, synchronous=False)

    def _listened(self, outcome, synchronous):
        if hasattr(outcome, "getHost"):
            self.port = outcome
            host = outcome.getHost()
            log.info("listening on {address}", address=_describe(host),
                     port=getattr(host, "port", None), endpoint=self.description)
            if self.on_listening is not None:
                self.on_listening(outcome)
            return
        message = f"cannot listen on {self.description}: {outcome.getErrorMessage()}"
        if synchronous:
            die(self.command, message, status=1)
        log.critical(message)
        sys.stderr.write(f"{self.command}: error: {message}\n")
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


def _describe(address):
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)
