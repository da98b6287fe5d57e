"""identity.verify runs in libsodium (PyNaCl) for speed; these tests hold it to
never accept what cryptography/OpenSSL's Ed25519 refuses, on honest, tampered,
random and degenerate inputs, and to keep the one-sentence BadSignature."""

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from peernet import identity
from peernet.errors import BadSignature
from peernet.identity import ED25519_SPKI_PREFIX, NodeIdentity, spki_der

KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(4)]


def openssl_accepts(der, signature, data):
    key = Ed25519PublicKey.from_public_bytes(der[len(ED25519_SPKI_PREFIX):])
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def ours_accepts(der, signature, data):
    try:
        identity.verify(der, signature, data)
    except BadSignature:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), data=st.binary(max_size=600),
       flip=st.one_of(st.none(), st.tuples(st.integers(0, 63), st.integers(1, 255))),
       other_data=st.one_of(st.none(), st.binary(max_size=40)))
def test_same_verdict_as_openssl_on_honest_and_tampered_signatures(key, data, flip, other_data):
    der = spki_der(key.public_key())
    signature = bytearray(key.sign(data))
    if flip is not None:
        signature[flip[0]] ^= flip[1]
    checked = data if other_data is None else other_data
    expected = openssl_accepts(der, bytes(signature), checked)
    assert ours_accepts(der, bytes(signature), checked) == expected
    if flip is None and other_data is None:
        assert expected  # an honest signature verifies under both


@settings(max_examples=200, deadline=None)
@given(raw_key=st.binary(min_size=32, max_size=32), signature=st.binary(min_size=64, max_size=64),
       data=st.binary(max_size=100))
def test_random_keys_and_signatures_are_never_accepted_where_openssl_refuses(raw_key, signature, data):
    der = ED25519_SPKI_PREFIX + raw_key
    if ours_accepts(der, signature, data):
        assert openssl_accepts(der, signature, data)


@pytest.mark.parametrize("length", [0, 32, 63, 65, 128])
def test_signature_of_wrong_length_is_refused(length):
    node = NodeIdentity.generate()
    good = node.sign(b"data")
    # A longer "signature" whose first 64 bytes are right must not pass either
    # (libsodium takes signature + message as one string).
    signature = (good + b"data" * 40)[:length]
    with pytest.raises(BadSignature):
        identity.verify(node.public_key_der, signature, b"data")
    with pytest.raises(BadSignature):
        identity.verify(node.public_key_der, good + b"d", b"ata")


def test_small_order_public_key_is_refused():
    # The identity point (y = 1) signs "anything" with R = identity, S = 0 under
    # a lax verifier; libsodium refuses small-order keys outright.
    der = ED25519_SPKI_PREFIX + (1).to_bytes(32, "little")
    signature = (1).to_bytes(32, "little") + bytes(32)
    with pytest.raises(BadSignature):
        identity.verify(der, signature, b"whatever")


def test_memoryview_and_bytearray_inputs_verify():
    node = NodeIdentity.generate()
    signature = node.sign(b"abc")
    identity.verify(bytearray(node.public_key_der), memoryview(signature), bytearray(b"abc"))
