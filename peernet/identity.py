"""Node identity: an Ed25519 key pair, a long-lived self-signed certificate,
and the ``peer_id`` derived from them.

``peer_id`` is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo of the
node's public key: self-certifying, so anyone holding the key can check it and
nobody can claim a peer_id without the matching private key.

Files live in ``<state_dir>/identity/`` (directory 0700, files 0600).  An
existing identity is never replaced: a missing, unreadable or corrupt key is
reported as one :class:`IdentityError` sentence and the files are left alone.
"""

import datetime
import hashlib
import os
import stat

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import NameOID
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError, CryptoError

try:
    # libsodium's crypto_sign_open itself, called without PyNaCl's wrapper
    # (which allocates and returns a copy of the message nobody reads):
    # libsodium takes NULL for the message and its length.  Same function,
    # same rules; about 1 us less per verify.  PyNaCl's wrapper if its cffi
    # module ever moves.
    from nacl._sodium import ffi as _ffi, lib as _sodium

    _NULL = _ffi.NULL
    _sodium_sign_open = _sodium.crypto_sign_open
except (ImportError, AttributeError):  # pragma: no cover - PyNaCl internals moved
    _sodium_sign_open = None

from peernet.errors import BadSignature, IdentityError

KEY_FILE = "node.key"
CERT_FILE = "node.crt"
IDENTITY_DIR = "identity"

# RFC 5280 4.1.2.5: 99991231235959Z means "no well-defined expiration date".
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)


def spki_der(public_key):
    """DER SubjectPublicKeyInfo of a public key object."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def peer_id_for(public_key_der):
    """The peer_id of a DER SubjectPublicKeyInfo (bytes)."""
    return hashlib.sha256(public_key_der).hexdigest()


def peer_id_of_certificate(certificate):
    """The peer_id of a cryptography ``x509.Certificate``."""
    return peer_id_for(spki_der(certificate.public_key()))


def load_public_key(public_key_der):
    """Parse a DER SubjectPublicKeyInfo holding an Ed25519 key.

    Raises :class:`BadSignature` when the bytes are not such a key.
    """
    try:
        key = serialization.load_der_public_key(public_key_der)
    except (ValueError, TypeError):
        raise BadSignature("the public key is not a valid DER SubjectPublicKeyInfo")
    if not isinstance(key, Ed25519PublicKey):
        raise BadSignature("the public key is not an Ed25519 key")
    return key


#: DER SubjectPublicKeyInfo of an Ed25519 key is this fixed 12-byte header
#: (SEQUENCE, AlgorithmIdentifier id-Ed25519, BIT STRING of 33 bytes) followed
#: by the 32-byte raw key (RFC 8410 section 4).  DER has one encoding per
#: value, so every Ed25519 SPKI that cryptography loads has exactly this form.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
ED25519_SPKI_BYTES = len(ED25519_SPKI_PREFIX) + 32
ED25519_SIGNATURE_BYTES = 64


def verify(public_key_der, signature, data):
    """Check an Ed25519 ``signature`` over ``data``; raise BadSignature if wrong.

    The gossip hot path verifies one signature per new PEER_UPDATE (its
    record's), so the check runs in libsodium (PyNaCl), about twice as fast as
    OpenSSL's Ed25519 on this machine (54 vs 103 us, docs/costs.md).  libsodium is the stricter of
    the two (it also refuses small-order keys and R points and non-canonical
    key encodings), so nothing OpenSSL refuses is accepted; honest signatures
    verify under both.  A key that is not the plain 44-byte Ed25519 SPKI goes
    through cryptography's loader, which says what is wrong with it.
    """
    public_key_der = bytes(public_key_der)
    if (len(public_key_der) != ED25519_SPKI_BYTES
            or public_key_der[:len(ED25519_SPKI_PREFIX)] != ED25519_SPKI_PREFIX):
        # Not the plain form: cryptography says what is wrong (BadSignature),
        # or, should it accept some other encoding, checks the signature itself.
        key = load_public_key(public_key_der)
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise BadSignature("the signature does not match the body and public key")
        return
    signature = bytes(signature)
    if len(signature) != ED25519_SIGNATURE_BYTES:
        # crypto_sign_open takes signature + message as one string: a signature
        # of any other length would shift the split, so it is refused here.
        raise BadSignature("the signature does not match the body and public key")
    signed = signature + bytes(data)
    if _sodium_sign_open is not None:
        if _sodium_sign_open(_NULL, _NULL, signed, len(signed),
                             public_key_der[len(ED25519_SPKI_PREFIX):]) != 0:
            raise BadSignature("the signature does not match the body and public key")
        return
    try:
        crypto_sign_open(signed, public_key_der[len(ED25519_SPKI_PREFIX):])
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        raise BadSignature("the signature does not match the body and public key")


class NodeIdentity:
    """A node's private key and certificate.

    Attributes a caller may rely on: ``private_key``, ``certificate``,
    ``public_key_der`` (DER SubjectPublicKeyInfo), ``peer_id`` (64 hex chars).
    """

    def __init__(self, private_key, certificate):
        self.private_key = private_key
        self.certificate = certificate
        self.public_key_der = spki_der(private_key.public_key())
        self.peer_id = peer_id_for(self.public_key_der)
        if peer_id_of_certificate(certificate) != self.peer_id:
            raise IdentityError("the certificate does not belong to the private key")

    def sign(self, data):
        """Ed25519 signature (64 bytes) over ``data``."""
        return self.private_key.sign(data)

    # -- construction ---------------------------------------------------------

    @classmethod
    def generate(cls):
        """A fresh in-memory identity (nothing written)."""
        key = Ed25519PrivateKey.generate()
        return cls(key, _self_signed_certificate(key))

    @classmethod
    def load_or_create(cls, state_dir):
        """Load the identity in ``state_dir``, creating one only if none exists.

        A key file that exists but cannot be used raises IdentityError; it is
        never overwritten.  A certificate whose key is present but whose file
        is missing is issued again from the same key (same peer_id).
        """
        directory = _identity_dir(state_dir)
        key_path = os.path.join(directory, KEY_FILE)
        cert_path = os.path.join(directory, CERT_FILE)
        if not os.path.lexists(key_path):
            if os.path.lexists(cert_path):
                raise IdentityError(
                    f"the identity in {directory} has a certificate but its key file "
                    f"{key_path} is missing; restore the key or move the directory away "
                    "to create a new identity"
                )
            key = Ed25519PrivateKey.generate()
            _write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        return cls.load(state_dir)

    @classmethod
    def load(cls, state_dir):
        """Load an existing identity; raise IdentityError if it is not usable."""
        directory = _identity_dir(state_dir, create=False)
        key_path = os.path.join(directory, KEY_FILE)
        cert_path = os.path.join(directory, CERT_FILE)
        key = _read_key(key_path)
        if not os.path.lexists(cert_path):
            certificate = _self_signed_certificate(key)
            _write_private(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        else:
            data = _read(cert_path, "certificate")
            try:
                certificate = x509.load_pem_x509_certificate(data)
                # Parsing is lazy: reach the key and check the self-signature
                # now, so damage is reported here rather than as an unknown
                # exception below or as every peer refusing our TLS handshakes.
                certificate.verify_directly_issued_by(certificate)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise IdentityError(
                    f"the certificate file {cert_path} is corrupt (not a PEM certificate)"
                )
            except InvalidSignature:
                raise IdentityError(
                    f"the certificate file {cert_path} is corrupt (its self-signature "
                    "does not verify)"
                )
        identity = cls.__new__(cls)
        try:
            cls.__init__(identity, key, certificate)
        except IdentityError:
            raise IdentityError(
                f"the certificate file {cert_path} does not match the key in {key_path}"
            )
        return identity


def _identity_dir(state_dir, create=True):
    directory = os.path.join(os.fspath(state_dir), IDENTITY_DIR)
    if create:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # makedirs' mode is filtered by the umask; make sure of 0700 on
            # both the state directory and the identity directory.
            for path in (os.fspath(state_dir), directory):
                if stat.S_IMODE(os.stat(path).st_mode) != 0o700:
                    os.chmod(path, 0o700)
        except OSError as e:
            raise IdentityError(
                f"cannot create the identity directory {directory}: {e.strerror}"
            )
    return directory


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise IdentityError(f"the {what} file {path} is missing")
    except OSError as e:
        raise IdentityError(f"the {what} file {path} cannot be read: {e.strerror}")


def _read_key(key_path):
    data = _read(key_path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError(
            f"the key file {key_path} is corrupt or encrypted (expected an unencrypted "
            "PEM PKCS#8 Ed25519 key); it was left untouched"
        )
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"the key file {key_path} does not hold an Ed25519 key")
    return key


def _write_private(path, data):
    """Create ``path`` with mode 0600; refuse to overwrite anything."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"refusing to overwrite the existing file {path}")
    except OSError as e:
        raise IdentityError(f"cannot write {path}: {e.strerror}")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


def _self_signed_certificate(key):
    peer_id = peer_id_for(spki_der(key.public_key()))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, peer_id)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, None)  # Ed25519 takes no separate hash algorithm
    )
