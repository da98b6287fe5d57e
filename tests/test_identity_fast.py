"""identity.verify calls libsodium's crypto_sign_open directly (no message
buffer); it must accept and refuse exactly what PyNaCl's wrapper around the
same function does, on honest, tampered, random and degenerate inputs."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from peernet import identity
from peernet.identity import ED25519_SPKI_PREFIX, spki_der
from test_identity_verify import ours_accepts  # the verdict of identity.verify

KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i + 7]) * 32) for i in range(3)]
DERS = [spki_der(k.public_key()) for k in KEYS]
# degenerate keys: identity point, a small-order point, all ones, a non-canonical y
ODD_KEYS = [ED25519_SPKI_PREFIX + k for k in (
    bytes([1]) + bytes(31),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    b"\xff" * 32, bytes(32))]


def both(der, signature, data, monkeypatch):
    direct = ours_accepts(der, signature, data)
    with monkeypatch.context() as m:
        m.setattr(identity, "_sodium_sign_open", None)
        wrapped = ours_accepts(der, signature, data)
    return direct, wrapped


def test_the_direct_call_is_in_use():
    assert identity._sodium_sign_open is not None


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2), st.binary(max_size=64), st.sampled_from(["honest", "flip", "random",
                                                                    "other", "odd_key"]),
       st.integers(0, 63), st.binary(min_size=64, max_size=64))
def test_direct_and_wrapped_agree(i, data, kind, at, noise):
    der, signature = DERS[i], KEYS[i].sign(data)
    if kind == "flip":
        signature = signature[:at] + bytes([signature[at] ^ 1]) + signature[at + 1:]
    elif kind == "random":
        signature = noise
    elif kind == "other":
        der = DERS[(i + 1) % 3]
    elif kind == "odd_key":
        der = ODD_KEYS[at % len(ODD_KEYS)]
    with pytest.MonkeyPatch.context() as mp:
        direct, wrapped = both(der, signature, data, mp)
    assert direct == wrapped
    assert direct == (kind == "honest")
