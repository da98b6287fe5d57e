"""SMTPMailer against a real Twisted SMTP server on 127.0.0.1."""

import email
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, protocol

from peernet.bootstrap.mailer import SMTPMailer, parse_smtp_url
from peernet.errors import BadRequest, ConfigError, ServiceUnavailable
from smtp_fixture import SMTPTestServer, self_signed_pem, smtp_server  # noqa: F401

pytestmark = pytest.mark.timeout(30)


def _reactor():
    from twisted.internet import reactor

    return reactor


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def _failure_of(d, kind):
    try:
        await d
    except kind as e:
        return e
    raise AssertionError(f"expected {kind.__name__}")


# -- URL parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("smtp://mail.example.org", ("smtp", "mail.example.org", 25, None, None)),
        ("smtp://127.0.0.1:2525", ("smtp", "127.0.0.1", 2525, None, None)),
        ("smtp://me:s%40cret@mail.example.org:587/",
         ("smtp", "mail.example.org", 587, "me", "s@cret")),
        ("smtps://me:pw@mail.example.org", ("smtps", "mail.example.org", 465, "me", "pw")),
        ("SMTP://[::1]:26", ("smtp", "::1", 26, None, None)),
    ],
)
def test_parse_good_urls(url, expected):
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "mail.example.org",
        "http://mail.example.org",
        "smtp://",
        "smtp://:25",
        "smtp://host:notaport",
        "smtp://host:70000",
        "smtp://host:0",
        "smtp://host/path",
        "smtp://host?x=1",
        "smtp://user@host",
        "smtp://:secret@host",
        "smtp://ho st",
    ],
)
def test_bad_urls_raise_config_error(url):
    with pytest.raises(ConfigError) as info:
        SMTPMailer.from_url(_reactor(), url, "peernet@example.org")
    message = str(info.value)
    assert message.startswith("the --smtp URL is not valid: ")
    assert "\n" not in message


def test_password_never_in_errors_or_repr():
    mailer = SMTPMailer.from_url(_reactor(), "smtp://me:hunter22@mail.example.org")
    assert "hunter22" not in repr(mailer)
    with pytest.raises(ConfigError) as info:
        SMTPMailer.from_url(_reactor(), "smtp://me:hunter22@mail.example.org:99999")
    assert "hunter22" not in str(info.value)


def test_bad_sender_is_config_error():
    with pytest.raises(ConfigError):
        SMTPMailer.from_url(_reactor(), "smtp://127.0.0.1", "no address here")


# -- sending -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_code_arrives(smtp_server):  # noqa: F811
    mailer = SMTPMailer.from_url(_reactor(), smtp_server.url, timeout=5)
    result = await mailer.send_code("alice@example.org", "01234567")
    assert result is None
    messages = await smtp_server.wait_for_messages(1)
    assert len(messages) == 1
    recipients, raw = messages[0]
    assert recipients == ["alice@example.org"]
    assert smtp_server.senders == ["peernet-bootstrap@localhost"]
    msg = email.message_from_bytes(raw)
    assert msg["To"] == "alice@example.org"
    assert msg["From"] == "peernet-bootstrap@localhost"
    body = msg.get_payload(decode=True).decode()
    assert "Your peernet verification code is 01234567; it expires in 15 minutes." in body
    assert smtp_server.codes() == ["01234567"]


@pytest_twisted.ensureDeferred
async def test_custom_sender(smtp_server):  # noqa: F811
    mailer = SMTPMailer.from_url(_reactor(), smtp_server.url, "noreply@boot.example.org",
                                 timeout=5)
    await mailer.send_code("bob@example.org", "99999999")
    recipients, raw = (await smtp_server.wait_for_messages(1))[0]
    assert smtp_server.senders == ["noreply@boot.example.org"]
    assert email.message_from_bytes(raw)["From"] == "noreply@boot.example.org"


@pytest_twisted.ensureDeferred
async def test_server_down_is_service_unavailable():
    mailer = SMTPMailer.from_url(_reactor(), f"smtp://127.0.0.1:{_closed_port()}", timeout=5)
    err = await _failure_of(mailer.send_code("alice@example.org", "01234567"),
                            ServiceUnavailable)
    assert str(err) == "the mail server could not be reached: connection refused"
    assert err.http_status == 503


@pytest_twisted.ensureDeferred
async def test_silent_server_times_out():
    # Accepts the TCP connection but never greets.
    reactor = _reactor()
    factory = protocol.Factory.forProtocol(protocol.Protocol)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        mailer = SMTPMailer.from_url(reactor, f"smtp://127.0.0.1:{port.getHost().port}",
                                     timeout=0.5)
        started = reactor.seconds()
        err = await _failure_of(mailer.send_code("alice@example.org", "01234567"),
                                ServiceUnavailable)
        assert reactor.seconds() - started < 5
        assert str(err).startswith("the mail server could not be reached: ")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_refused_recipient(smtp_server):  # noqa: F811
    smtp_server.refuse.add("nobody@example.org")
    mailer = SMTPMailer.from_url(_reactor(), smtp_server.url, timeout=5)
    err = await _failure_of(mailer.send_code("nobody@example.org", "01234567"),
                            ServiceUnavailable)
    assert str(err).startswith("the mail server refused the message: ")
    assert smtp_server.messages == []


@pytest_twisted.ensureDeferred
async def test_unmailable_address_and_bad_code():
    mailer = SMTPMailer.from_url(_reactor(), "smtp://127.0.0.1:1")
    await _failure_of(mailer.send_code("a@b.c\r\nBcc: x@y.z", "01234567"), BadRequest)
    await _failure_of(mailer.send_code("ünï@example.org", "01234567"), BadRequest)
    await _failure_of(mailer.send_code("a@example.org", "1234"), ValueError)


# -- authentication ------------------------------------------------------------------


@pytest.fixture
def auth_server():
    server = SMTPTestServer(_reactor(), credentials=("peernet", "s3cret")).start()
    yield server
    pytest_twisted.blockon(server.stop())


@pytest_twisted.ensureDeferred
async def test_auth_success(auth_server):
    url = f"smtp://peernet:s3cret@127.0.0.1:{auth_server.port}"
    mailer = SMTPMailer.from_url(_reactor(), url, timeout=5)
    await mailer.send_code("carol@example.org", "11112222")
    recipients, _raw = (await auth_server.wait_for_messages(1))[0]
    assert recipients == ["carol@example.org"]
    assert auth_server.codes() == ["11112222"]


@pytest_twisted.ensureDeferred
async def test_auth_wrong_password(auth_server):
    url = f"smtp://peernet:wrongpass@127.0.0.1:{auth_server.port}"
    mailer = SMTPMailer.from_url(_reactor(), url, timeout=5)
    err = await _failure_of(mailer.send_code("carol@example.org", "11112222"),
                            ServiceUnavailable)
    assert str(err).startswith("the mail server refused the message: ")
    assert "wrongpass" not in str(err)
    assert auth_server.messages == []


@pytest_twisted.ensureDeferred
async def test_no_credentials_against_auth_server(auth_server):
    mailer = SMTPMailer.from_url(_reactor(), auth_server.url, timeout=5)
    await _failure_of(mailer.send_code("carol@example.org", "11112222"), ServiceUnavailable)
    assert auth_server.messages == []


# -- implicit TLS ----------------------------------------------------------------------


@pytest.fixture
def tls_server():
    from twisted.internet import ssl

    from smtp_fixture import _Factory

    cert_pem, key_pem = self_signed_pem()
    server = SMTPTestServer(_reactor())
    options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    listening = _reactor().listenSSL(0, _Factory(server), options, interface="127.0.0.1")
    server.port = listening.getHost().port
    server.cert_pem = cert_pem
    yield server
    pytest_twisted.blockon(defer.maybeDeferred(listening.stopListening))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Twisted passes pyOpenSSL X509
@pytest_twisted.ensureDeferred
async def test_smtps_with_trusted_certificate(tls_server):
    from twisted.internet import ssl

    trust = ssl.Certificate.loadPEM(tls_server.cert_pem)
    options = ssl.optionsForClientTLS("127.0.0.1", trustRoot=trust)
    mailer = SMTPMailer.from_url(_reactor(), f"smtps://127.0.0.1:{tls_server.port}",
                                 timeout=5, tls_options=options)
    await mailer.send_code("dave@example.org", "22223333")
    assert (await tls_server.wait_for_messages(1))[0][0] == ["dave@example.org"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_smtps_untrusted_certificate_is_refused(tls_server):
    # Default options: system CAs, which do not know the self-signed cert.
    mailer = SMTPMailer.from_url(_reactor(), f"smtps://127.0.0.1:{tls_server.port}",
                                 timeout=5)
    err = await _failure_of(mailer.send_code("dave@example.org", "22223333"),
                            ServiceUnavailable)
    assert str(err).startswith("the mail server could not be reached: ")
    assert tls_server.messages == []
