"""Real asymmetric keys and hand-signed JWTs for the auth0/JWKS tests.

Tokens are signed with ``cryptography`` directly (not joserfc, which the code under test uses),
so a bug in how the gateway calls joserfc cannot hide behind the same call in the test.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from functools import cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES = {"ES256": (ec.SECP256R1, "P-256", 32), "ES384": (ec.SECP384R1, "P-384", 48)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int(value: int, length: int | None = None) -> str:
    length = length or (value.bit_length() + 7) // 8
    return b64url(value.to_bytes(length, "big"))


class SigningKey:
    """A private key with its ``kid`` and ``alg``; signs JWTs and gives its public JWK."""

    def __init__(self, kid: str, alg: str, private: PrivateKey) -> None:
        self.kid = kid
        self.alg = alg
        self.private = private

    def jwk(self, **extra: object) -> dict[str, object]:
        """The public JWK (RFC 7517), with ``kid``, ``alg`` and ``use: sig`` unless overridden."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            jwk: dict[str, object] = {"kty": "RSA", "n": _int(numbers.n), "e": _int(numbers.e)}
        elif isinstance(public, ec.EllipticCurvePublicKey):
            _, crv, size = _CURVES[self.alg]
            point = public.public_numbers()
            jwk = {"kty": "EC", "crv": crv, "x": _int(point.x, size), "y": _int(point.y, size)}
        else:
            raw = public.public_bytes_raw()  # type: ignore[union-attr]
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        jwk.update(extra)
        return {k: v for k, v in jwk.items() if v is not None}

    def private_jwk(self) -> dict[str, object]:
        """The JWK with the private member ``d`` (which a JWKS must never hold)."""
        assert isinstance(self.private, rsa.RSAPrivateKey)
        numbers = self.private.private_numbers()
        return {**self.jwk(), "d": _int(numbers.d)}

    def sign_bytes(self, data: bytes, alg: str | None = None) -> bytes:
        alg = alg or self.alg
        key = self.private
        if isinstance(key, rsa.RSAPrivateKey):
            digest = _HASHES[alg[2:]]()
            if alg.startswith("PS"):
                pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
                return key.sign(data, pss, digest)
            return key.sign(data, padding.PKCS1v15(), digest)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            _, _, size = _CURVES[alg]
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(_HASHES[alg[2:]]())))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        return key.sign(data)

    def token(
        self,
        claims: Mapping[str, object],
        *,
        header: Mapping[str, object] | None = None,
        alg: str | None = None,
    ) -> str:
        """A compact JWS: header ``{alg, typ, kid}`` (plus ``header``), signed with this key."""
        head: dict[str, object] = {"alg": alg or self.alg, "typ": "JWT", "kid": self.kid}
        head.update(header or {})
        head = {k: v for k, v in head.items() if v is not None}
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self.sign_bytes(signing_input.encode(), alg)
        return f"{signing_input}.{b64url(signature)}"


@cache
def rsa_key(kid: str = "rsa-1", alg: str = "RS256", bits: int = 2048) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return SigningKey(kid, alg, private)


@cache
def ec_key(kid: str = "ec-1", alg: str = "ES256") -> SigningKey:
    curve, _, _ = _CURVES[alg]
    return SigningKey(kid, alg, ec.generate_private_key(curve()))


@cache
def ed_key(kid: str = "ed-1") -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def jwks(*keys: SigningKey) -> dict[str, object]:
    return {"keys": [key.jwk() for key in keys]}


def jwks_text(*keys: SigningKey) -> str:
    return json.dumps(jwks(*keys))
