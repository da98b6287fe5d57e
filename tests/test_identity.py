"""Tests for peernet.identity: creation, reloading, file modes, refusal to
replace anything, and signatures."""

import base64
import hashlib
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peernet import identity
from peernet.errors import BadSignature, IdentityError
from peernet.identity import NodeIdentity

ED25519_OID_DER = bytes.fromhex("06032b6570")  # OBJECT IDENTIFIER 1.3.101.112
UNKNOWN_OID_DER = bytes.fromhex("06032b6573")  # 1.3.101.115: no such key type


@pytest.fixture(autouse=True)
def umask_022():
    """Run every test under the common umask 022 (the mode checks need it)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def state(tmp_path):
    """A state directory that does not exist yet."""
    return tmp_path / "state"


def paths(state_dir):
    directory = state_dir / identity.IDENTITY_DIR
    return directory, directory / identity.KEY_FILE, directory / identity.CERT_FILE


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(root):
    """Every path under root with its content (None for directories) and mode."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            result[path] = (None, mode(path))
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                result[path] = (f.read(), mode(path))
    return result


def assert_one_sentence_naming(err, path):
    message = str(err.value)
    assert str(path) in message
    assert "\n" not in message
    # One sentence: no sentence break inside (the path itself has no ". ").
    assert ". " not in message
    assert err.value.code == "bad_identity"


def pem(label, der):
    return (
        f"-----BEGIN {label}-----\n".encode()
        + base64.encodebytes(der)
        + f"-----END {label}-----\n".encode()
    )


# Creation and reloading ---------------------------------------------------------


def test_create_then_reload_gives_same_peer_id(state):
    created = NodeIdentity.load_or_create(state)
    again = NodeIdentity.load_or_create(state)
    loaded = NodeIdentity.load(state)
    assert created.peer_id == again.peer_id == loaded.peer_id
    assert created.public_key_der == loaded.public_key_der
    # Reloading read the same certificate rather than issuing a new one.
    assert loaded.certificate == created.certificate


def test_peer_id_is_sha256_of_der_spki(state):
    node = NodeIdentity.load_or_create(state)
    _, key_path, cert_path = paths(state)
    # Computed independently, from the files on disk.
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert len(spki) == 44  # 12-byte Ed25519 SPKI header + 32-byte key
    expected = hashlib.sha256(spki).hexdigest()
    assert node.peer_id == expected
    assert node.public_key_der == spki
    assert len(node.peer_id) == 64 and node.peer_id == node.peer_id.lower()
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert identity.peer_id_of_certificate(cert) == expected


def test_generated_identities_differ():
    assert NodeIdentity.generate().peer_id != NodeIdentity.generate().peer_id


def test_modes_under_umask_022(state):
    NodeIdentity.load_or_create(state)
    directory, key_path, cert_path = paths(state)
    assert mode(state) == 0o700
    assert mode(directory) == 0o700
    assert mode(key_path) == 0o600
    assert mode(cert_path) == 0o600


def test_existing_state_dir_is_tightened_to_0700(state):
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    NodeIdentity.load_or_create(state)
    assert mode(state) == 0o700
    assert mode(paths(state)[0]) == 0o700


# Signatures -------------------------------------------------------------------------


def test_sign_verify_round_trip():
    node = NodeIdentity.generate()
    message = b"peernet signed body"
    signature = node.sign(message)
    assert len(signature) == 64
    identity.verify(node.public_key_der, signature, message)  # does not raise


def test_verify_rejects_modified_message():
    node = NodeIdentity.generate()
    signature = node.sign(b"pay 10")
    with pytest.raises(BadSignature):
        identity.verify(node.public_key_der, signature, b"pay 11")


def test_verify_rejects_other_key():
    node, other = NodeIdentity.generate(), NodeIdentity.generate()
    signature = node.sign(b"hello")
    with pytest.raises(BadSignature):
        identity.verify(other.public_key_der, signature, b"hello")


def test_verify_rejects_modified_signature():
    node = NodeIdentity.generate()
    signature = bytearray(node.sign(b"hello"))
    signature[0] ^= 1
    with pytest.raises(BadSignature):
        identity.verify(node.public_key_der, bytes(signature), b"hello")


@pytest.mark.parametrize(
    "public_key_der",
    [
        b"",
        b"not der at all",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ],
    ids=["empty", "garbage", "ecdsa-key"],
)
def test_verify_rejects_unusable_public_key(public_key_der):
    node = NodeIdentity.generate()
    with pytest.raises(BadSignature):
        identity.verify(public_key_der, node.sign(b"x"), b"x")


# A key file that exists but cannot be used is never replaced ------------------------


def _ed25519_pkcs8_der():
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


CORRUPT_KEYS = {
    "garbage": b"\x00\xffthis is not a key\n",
    "empty": b"",
    "truncated-pem": b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2Vw\n",
    "bad-base64": b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    "encrypted": Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ),
    "x25519-key": x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ),
    # A damaged algorithm identifier: cryptography raises UnsupportedAlgorithm,
    # which is neither ValueError nor TypeError.
    "unknown-algorithm": pem(
        "PRIVATE KEY", _ed25519_pkcs8_der().replace(ED25519_OID_DER, UNKNOWN_OID_DER)
    ),
}


@pytest.mark.parametrize("content", list(CORRUPT_KEYS.values()), ids=list(CORRUPT_KEYS))
@pytest.mark.parametrize("loader", ["load_or_create", "load"])
def test_corrupt_key_file_raises_and_is_left_untouched(state, content, loader):
    NodeIdentity.load_or_create(state)
    _, key_path, cert_path = paths(state)
    key_path.write_bytes(content)
    before = snapshot(state)
    with pytest.raises(IdentityError) as err:
        getattr(NodeIdentity, loader)(state)
    assert_one_sentence_naming(err, key_path)
    # Byte for byte the same (and no other file appeared or changed).
    assert key_path.read_bytes() == content
    assert snapshot(state) == before


def test_corrupt_key_without_certificate_creates_nothing(state):
    directory, key_path, cert_path = paths(state)
    directory.mkdir(parents=True)
    key_path.write_bytes(b"corrupt")
    with pytest.raises(IdentityError) as err:
        NodeIdentity.load_or_create(state)
    assert_one_sentence_naming(err, key_path)
    assert key_path.read_bytes() == b"corrupt"
    assert not cert_path.exists()


def test_missing_key_with_certificate_present_raises_and_creates_nothing(state):
    NodeIdentity.load_or_create(state)
    directory, key_path, cert_path = paths(state)
    key_path.unlink()
    before = snapshot(state)
    for loader in (NodeIdentity.load_or_create, NodeIdentity.load):
        with pytest.raises(IdentityError) as err:
            loader(state)
        assert_one_sentence_naming(err, key_path)
        assert not os.path.lexists(key_path)
        assert snapshot(state) == before


def test_dangling_key_symlink_is_not_replaced(state):
    directory, key_path, cert_path = paths(state)
    directory.mkdir(parents=True)
    key_path.symlink_to(directory / "elsewhere.key")
    with pytest.raises(IdentityError) as err:
        NodeIdentity.load_or_create(state)
    assert_one_sentence_naming(err, key_path)
    assert key_path.is_symlink() and not (directory / "elsewhere.key").exists()
    assert not cert_path.exists()


@pytest.mark.parametrize("how", ["key-path-is-a-directory", "chmod-000"])
def test_unreadable_key_file_raises(state, how):
    NodeIdentity.load_or_create(state)
    _, key_path, cert_path = paths(state)
    if how == "key-path-is-a-directory":
        # Works even as root: open() of a directory fails with EISDIR.
        key_path.unlink()
        key_path.mkdir()
    else:
        # Root (and CAP_DAC_OVERRIDE) reads a mode-000 file anyway, so this
        # variant only means something for an ordinary user; the directory
        # variant above covers "unreadable" when the tests run as root.
        if os.geteuid() == 0:
            pytest.skip("root can read a mode-000 file")
        os.chmod(key_path, 0)
    before = snapshot(state) if how != "chmod-000" else None
    try:
        for loader in (NodeIdentity.load_or_create, NodeIdentity.load):
            with pytest.raises(IdentityError) as err:
                loader(state)
            assert_one_sentence_naming(err, key_path)
            assert os.path.lexists(key_path)
            if before is not None:
                assert snapshot(state) == before
    finally:
        if how == "chmod-000":
            os.chmod(key_path, 0o600)


# Certificate handling ----------------------------------------------------------


def test_missing_certificate_is_issued_again_with_same_peer_id(state):
    first = NodeIdentity.load_or_create(state)
    _, key_path, cert_path = paths(state)
    key_bytes = key_path.read_bytes()
    cert_path.unlink()
    for loader in (NodeIdentity.load, NodeIdentity.load_or_create):
        again = loader(state)
        assert again.peer_id == first.peer_id
        assert cert_path.exists()
        assert mode(cert_path) == 0o600
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert identity.peer_id_of_certificate(cert) == first.peer_id
        assert key_path.read_bytes() == key_bytes
        cert_path.unlink()


def test_certificate_of_another_key_raises_and_is_left_untouched(state):
    NodeIdentity.load_or_create(state)
    _, key_path, cert_path = paths(state)
    other = NodeIdentity.generate()
    foreign = other.certificate.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(foreign)
    before = snapshot(state)
    for loader in (NodeIdentity.load_or_create, NodeIdentity.load):
        with pytest.raises(IdentityError) as err:
            loader(state)
        assert_one_sentence_naming(err, cert_path)
        assert snapshot(state) == before


def _damaged_certificate(node, occurrence, new_bytes):
    """node's certificate with one Ed25519 OID occurrence replaced."""
    der = node.certificate.public_bytes(serialization.Encoding.DER)
    positions = [i for i in range(len(der)) if der.startswith(ED25519_OID_DER, i)]
    # In order: tbsCertificate.signature, subjectPublicKeyInfo, signatureAlgorithm.
    assert len(positions) == 3
    at = positions[occurrence]
    return pem("CERTIFICATE", der[:at] + new_bytes + der[at + len(ED25519_OID_DER):])


def _flipped_signature(node):
    der = bytearray(node.certificate.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature value
    return pem("CERTIFICATE", bytes(der))


@pytest.mark.parametrize(
    "damage",
    ["garbage", "unknown-key-algorithm", "bad-signature"],
)
def test_corrupt_certificate_raises_and_is_left_untouched(state, damage):
    node = NodeIdentity.load_or_create(state)
    _, key_path, cert_path = paths(state)
    content = {
        "garbage": lambda: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "unknown-key-algorithm": lambda: _damaged_certificate(node, 1, UNKNOWN_OID_DER),
        "bad-signature": lambda: _flipped_signature(node),
    }[damage]()
    cert_path.write_bytes(content)
    before = snapshot(state)
    with pytest.raises(IdentityError) as err:
        NodeIdentity.load(state)
    assert_one_sentence_naming(err, cert_path)
    assert snapshot(state) == before


def test_load_of_empty_state_dir_raises_and_creates_nothing(state):
    state.mkdir()
    with pytest.raises(IdentityError) as err:
        NodeIdentity.load(state)
    assert_one_sentence_naming(err, paths(state)[1])
    assert list(state.iterdir()) == []


def test_certificate_is_self_signed_ed25519_with_peer_id_as_name():
    node = NodeIdentity.generate()
    cert = node.certificate
    cert.verify_directly_issued_by(cert)  # self-signed, signature valid
    assert cert.subject == cert.issuer
    (cn,) = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert cn.value == node.peer_id
