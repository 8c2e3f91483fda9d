"""The service roles' passwords reach PostgreSQL only as SCRAM-SHA-256 verifiers."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from iot_consumer.migrations import scram_sha256_verifier

# RFC 7677, section 3: the SCRAM-SHA-256 exchange for password "pencil"
RFC_SALT = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_AUTH_MESSAGE = (
    b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
)
RFC_CLIENT_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC_SERVER_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_the_verifier_accepts_the_rfc_7677_exchange_as_a_server_would() -> None:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, PostgreSQL's form: with the
    RFC's salt, a server holding only this verifier accepts the RFC's client proof
    (H(proof XOR HMAC(StoredKey, AuthMessage)) == StoredKey) and signs with the RFC's server
    signature. The password appears nowhere in it; each call salts afresh."""
    verifier = scram_sha256_verifier("pencil", salt=base64.b64decode(RFC_SALT))
    scheme, rest = verifier.split("$", 1)
    head, keys = rest.split("$")
    stored_key, server_key = (base64.b64decode(part) for part in keys.split(":"))
    assert (scheme, head) == ("SCRAM-SHA-256", f"4096:{RFC_SALT}")
    client_signature = hmac.new(stored_key, RFC_AUTH_MESSAGE, "sha256").digest()
    client_key = bytes(a ^ b for a, b in zip(base64.b64decode(RFC_CLIENT_PROOF), client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    assert base64.b64encode(hmac.new(server_key, RFC_AUTH_MESSAGE, "sha256").digest()).decode() == RFC_SERVER_SIGNATURE
    assert "pencil" not in verifier
    assert scram_sha256_verifier("pencil") != scram_sha256_verifier("pencil")


@pytest.mark.parametrize("iterations", [4096, 10000])
def test_the_iteration_count_is_written_into_the_verifier(iterations: int) -> None:
    """The server reads the iteration count from the verifier: it must be the one used."""
    assert scram_sha256_verifier("x", iterations=iterations).startswith(f"SCRAM-SHA-256${iterations}:")
