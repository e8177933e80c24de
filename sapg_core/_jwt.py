"""The ``jwt`` authorizer: HMAC-signed JWTs, checked the way the original's jose checked them.

Theory of operation
-------------------
The original (reference/UPSTREAM.md §7.1) passes the bearer token to jose's ``jwtVerify``, with
the UTF-8 bytes of ``secret`` as the key, and maps jose's error class to a fixed answer (§6.2).
Clients see those answers, so this module reproduces jose's checks *and their order*; the first
failing step decides the answer (all 401):

1. Structure (RFC 7515 §5.2 steps 1-3): three ``.``-separated parts; the protected header is
   base64url JSON; ``crit`` may name only ``b64`` (RFC 7797); ``alg`` is a non-empty string.
   -> ``Invalid JWS`` (an unknown ``crit`` name -> ``JWT verification failed``).
2. Algorithm: our explicit allow-list, see :class:`HmacJwtVerifier`. -> ``Algorithm not allowed``.
3. Key type: a shared secret cannot verify an asymmetric ``alg`` (RS256, ES256, ``none``, ...);
   a base64url payload must be ASCII. -> ``JWT verification failed``.
4. The signature is valid base64url. -> ``Invalid JWS``.
5. Key import: HS256/HS384/HS512 with a non-empty secret. -> ``JWT verification failed``.
6. The MAC matches (joserfc, constant-time compare). -> ``Signature verification failed``.
7. Payload: ``b64: false`` -> ``Invalid JWT``; not base64url -> ``Invalid JWS``; not a JSON
   object -> ``Invalid JWT``.
8. Claims (RFC 7519 §4.1), :func:`validate_claims`: presence of ``iss`` then ``aud``, their
   values, ``iat`` type, ``nbf``, ``exp``. -> ``JWT claim validation failed`` /
   ``Token has expired.`` So an expired token from the wrong issuer reports the issuer.

jose's own detail (``missing required "iss" claim`` and the like) goes to ``AuthError.log``
for the operator; the client gets only the fixed texts.

Base64url: jose decodes with ``Uint8Array.fromBase64(.., {alphabet: "base64url"})`` (or ``atob``
on older runtimes). We accept what both accept: the base64url alphabet, optional correct ``=``
padding, ASCII whitespace, non-zero trailing bits; ``+`` and ``/`` are refused. Text is decoded
as ``TextDecoder`` does (a leading BOM dropped, bad UTF-8 replaced) and encoded as
``TextEncoder`` does.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from joserfc.jwk import OctKey
from joserfc.jws import JWSRegistry

from ._errors import AuthError
from ._events import Headers
from ._model import JwtAuthorizer

__all__ = ["HmacJwtVerifier", "bearer_token", "validate_claims"]

_HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})

#: jose 6's test for "this alg takes a symmetric key" (lib/check_key_type.js, by the first two
#: characters): a secret passes it, then fails at key import for all but HS256/384/512.
_SYMMETRIC_ALG_PREFIXES: Final = frozenset({"A1", "A2", "di", "HS", "PB"})
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_SWAP_ALPHABETS: Final = bytes.maketrans(b"-_+/", b"+/-_")
_PADDING: Final = (b"", b"===", b"==", b"=")
_DROP_WHITESPACE: Final = str.maketrans("", "", "\t\n\f\r ")
_BEARER_PREFIX: Final = "Bearer "


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


#: ``JSON.parse``: no NaN/Infinity. One decoder, built once (``_json.loads`` builds one per call).
_JSON: Final = json.JSONDecoder(parse_constant=_reject_constant)


# --- the client answers (UPSTREAM.md §6.2) -------------------------------------------------


def _no_token() -> AuthError:
    return AuthError("No token provided or token format is invalid.")


def _invalid_jws(detail: str) -> AuthError:
    return AuthError("Invalid JWS", code="ERR_JWS_INVALID", log=detail)


def _invalid_jwt(detail: str) -> AuthError:
    return AuthError("Invalid JWT", code="ERR_JWT_INVALID", log=detail)


def _verification_failed(detail: str) -> AuthError:
    """Any error jose has no class for (TypeError, JOSENotSupported, WebCrypto errors)."""
    return AuthError("JWT verification failed", log=detail)


def _claim_failed(detail: str) -> AuthError:
    return AuthError(
        "JWT claim validation failed", code="ERR_JWT_CLAIM_VALIDATION_FAILED", log=detail
    )


def _expired() -> AuthError:
    return AuthError(
        "Token has expired.", code="ERR_JWT_EXPIRED", log='"exp" claim timestamp check failed'
    )


def _not_yet_valid() -> AuthError:
    return _claim_failed('"nbf" claim timestamp check failed')


# --- the bearer token -------------------------------------------------------------------------


def bearer_token(headers: Headers) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, cut as the original cuts it.

    The value must start with exactly ``Bearer `` (capital B, one space); the token is the text
    between the first and the second space (``Bearer a b`` -> ``a``, ``Bearer  x`` -> ``""``).
    Several ``authorization`` fields are joined with ``", "`` as Fetch's ``Headers.get`` does.

    Raises:
        AuthError: 401 ``AUTH_ERROR`` "No token provided or token format is invalid."
    """
    value: str | None = None
    for name, field_value in headers:
        if name == "authorization":
            value = field_value if value is None else f"{value}, {field_value}"
    if value is None or not value.startswith(_BEARER_PREFIX):
        raise _no_token()
    return value[len(_BEARER_PREFIX) :].partition(" ")[0]


# --- claims (RFC 7519 §4.1, jose's validateClaimsSet) -----------------------------------------


def _is_number(value: object) -> bool:
    # A JSON true/false is not a number, though Python's bool is an int.
    return isinstance(value, int | float) and not isinstance(value, bool)


#: The last second of 9999-12-31 UTC: the largest NumericDate a sane token carries.
MAX_NUMERIC_DATE: Final = 253_402_300_799


def is_sane_date(value: object) -> bool:
    """Whether ``value`` is a NumericDate (RFC 7519 §2) a token may sanely carry.

    A number (not a bool), finite (``1e400`` parses as infinity), not NaN, and in
    ``0 .. MAX_NUMERIC_DATE``. jose accepts any number, so ``exp: 1e400`` made a token that
    never expires; we refuse it as invalid (docs/differences.md).
    """
    if not _is_number(value):
        return False
    assert isinstance(value, int | float)
    try:
        return 0 <= value <= MAX_NUMERIC_DATE  # NaN compares false; a huge int compares fine
    except OverflowError:  # pragma: no cover - int/float comparison does not overflow
        return False


def _has_audience(aud: object, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    if isinstance(aud, list):
        return audience in aud
    return False


def _check_issuer_and_audience(
    payload: Mapping[str, object], issuer: str | None, audience: str | None
) -> None:
    # jose checks presence of every configured claim first (iss before aud), then the values;
    # "" configures presence only.
    if issuer is not None and "iss" not in payload:
        raise _claim_failed('missing required "iss" claim')
    if audience is not None and "aud" not in payload:
        raise _claim_failed('missing required "aud" claim')
    if issuer and payload.get("iss") != issuer:
        raise _claim_failed('unexpected "iss" claim value')
    if audience and not _has_audience(payload.get("aud"), audience):
        raise _claim_failed('unexpected "aud" claim value')


def _check_date(payload: Mapping[str, object], name: str) -> float:
    value = payload[name]
    if not _is_number(value):
        raise _claim_failed(f'"{name}" claim must be a number')
    if not is_sane_date(value):
        raise _claim_failed(
            f'"{name}" claim is not a sane NumericDate (non-finite or out of range)'
        )
    assert isinstance(value, int | float)
    return value


def _check_times(payload: Mapping[str, object], now: int) -> None:
    if "iat" in payload:
        _check_date(payload, "iat")
    if "nbf" in payload and _check_date(payload, "nbf") > now:
        raise _not_yet_valid()
    if "exp" in payload and _check_date(payload, "exp") <= now:
        raise _expired()


def validate_claims(
    payload: Mapping[str, object], *, issuer: str | None, audience: str | None, now: float
) -> None:
    """Check a verified token's claims as jose's ``jwtVerify`` does, with no clock tolerance.

    Args:
        payload: the decoded claims set.
        issuer: ``None``: ``iss`` not required; ``""``: ``iss`` must be present; otherwise
            ``iss`` must equal it.
        audience: likewise for ``aud``, which may be a string or an array containing it.
        now: epoch seconds; compared as ``floor(now)``, jose's ``epoch(new Date())``.

    Tokens without ``exp`` never expire (the original's behaviour, kept).

    Raises:
        AuthError: ``ERR_JWT_CLAIM_VALIDATION_FAILED`` (``iss``/``aud`` missing or wrong,
            ``iat``/``nbf``/``exp`` not a number or not a sane date (:func:`is_sane_date`),
            ``nbf > now``), or ``ERR_JWT_EXPIRED``
            (``exp <= now``), checked in that order.
    """
    _check_issuer_and_audience(payload, issuer, audience)
    _check_times(payload, math.floor(now))


# --- decoding helpers ---------------------------------------------------------------------------


def _b64url_decode(segment: str) -> bytes:
    """Decode base64url as described in the module docstring; ``ValueError`` when it is not."""
    if "=" not in segment:
        # Fast path for the usual unpadded segment. The swap maps the base64url alphabet onto
        # the standard one and "+" "/" onto "-" "_", which strict mode then refuses.
        try:
            data = segment.encode("ascii")
            padded = data + _PADDING[len(data) % 4]
            return binascii.a2b_base64(padded.translate(_SWAP_ALPHABETS), strict_mode=True)
        except ValueError:  # binascii.Error, UnicodeEncodeError: let the lenient path decide
            pass
    return _b64url_decode_lenient(segment)


def _b64url_decode_lenient(segment: str) -> bytes:
    segment = segment.translate(_DROP_WHITESPACE)
    unpadded = segment.rstrip("=")
    padding = len(segment) - len(unpadded)
    if padding and (padding > 2 or len(segment) % 4):
        raise ValueError("bad padding")
    if len(unpadded) % 4 == 1 or not _BASE64URL.fullmatch(unpadded):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))


def _utf8(text: str) -> bytes:
    """``TextEncoder.encode``: lone surrogates become U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        repaired = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return repaired.encode("utf-8")


def _json_object(data: bytes) -> dict[str, object] | None:
    """``JSON.parse(new TextDecoder().decode(data))`` if that is an object, else ``None``."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = _JSON.decode(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _payload_is_encoded(header: Mapping[str, object]) -> bool:
    """RFC 7797 ``b64``, honoured only when ``crit`` names it (jose knows no other extension)."""
    if "crit" not in header:
        return True
    crit = header["crit"]
    if not isinstance(crit, list) or not crit or not all(isinstance(n, str) and n for n in crit):
        raise _invalid_jws('"crit" must be an array of non-empty strings when present')
    for name in crit:
        if name != "b64":
            raise _verification_failed("the token's crit names an extension jose does not know")
        if "b64" not in header:
            raise _invalid_jws('Extension Header Parameter "b64" is missing')
    b64 = header["b64"]
    if not isinstance(b64, bool):
        raise _invalid_jws('The "b64" Header Parameter must be a boolean')
    return b64


def _protected_header(segment: str) -> tuple[str, bool]:
    """The ``alg`` and whether the payload is base64url-encoded, or ``Invalid JWS``."""
    try:
        header = _json_object(_b64url_decode(segment))
    except ValueError:
        header = None
    if header is None:
        # A header that parses to a non-object ends the same way in jose: "alg" is missing.
        raise _invalid_jws("JWS Protected Header is invalid")
    encoded = _payload_is_encoded(header)
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise _invalid_jws('JWS "alg" (Algorithm) Header Parameter missing or invalid')
    return alg, encoded


def _claims_set(segment: str, *, encoded: bool) -> dict[str, object]:
    if not encoded:
        raise _invalid_jwt("JWTs MUST NOT use unencoded payload")
    try:
        data = _b64url_decode(segment)
    except ValueError:
        raise _invalid_jws("Failed to base64url decode the payload") from None
    claims = _json_object(data)
    if claims is None:
        raise _invalid_jwt("JWT Claims Set must be a top-level JSON object")
    return claims


def _ceil(value: float) -> float:
    """``ceil`` that keeps infinities; NaN (never produced by JSON) is left for the caller."""
    return math.ceil(value) if math.isfinite(value) else value


def _validity_window(claims: Mapping[str, object]) -> tuple[float, float]:
    """``(valid_from, valid_until)`` with ``valid_from <= now < valid_until`` exactly when
    :func:`validate_claims`'s ``nbf``/``exp`` checks pass (``nbf <= floor(now) <=> ceil(nbf) <=
    now`` and ``exp > floor(now) <=> now < ceil(exp)``), so a cache hit needs no ``floor``.
    Only called on claims that passed the type checks."""
    nbf = claims.get("nbf")
    exp = claims.get("exp")
    valid_from = _ceil(nbf) if isinstance(nbf, int | float) and nbf == nbf else -math.inf
    valid_until = _ceil(exp) if isinstance(exp, int | float) and exp == exp else math.inf
    return valid_from, valid_until


# --- the verifier -------------------------------------------------------------------------------

#: claims, valid_from, valid_until
_CacheEntry = tuple[Mapping[str, object], float, float]


class HmacJwtVerifier:
    """Verifies bearer tokens for one ``type: jwt`` authorizer.

    Algorithms: the original ignores ``algorithm`` and accepts any of HS256/HS384/HS512
    (UPSTREAM.md §11 item 21). We honour it (DESIGN.md, "Parity, and where we deliberately
    differ"): a token may use only the configured algorithm, so a config that says HS256 is not
    silently widened. The allow-list is ``{algorithm} & {HS256, HS384, HS512}``; another HMAC
    ``alg`` gets jose's own answer for an allow-list miss, 401 ``ERR_JOSE_ALG_NOT_ALLOWED``,
    checked right after the header. Non-HMAC ``alg`` values keep the original's answer, 401
    ``AUTH_ERROR`` "JWT verification failed", as does an empty ``secret`` (the platform refuses a
    zero-length HMAC key, so nothing is ever accepted).

    Verified-token cache: an LRU map from the token string to its claims, holding only tokens
    that passed every check. A hit re-checks only ``nbf``/``exp`` against ``now`` (same answers,
    same order) and drops the entry if it fails. The cache belongs to this instance; a new
    config builds a new verifier, so a changed secret never sees old entries.

    Fields:
        authorizer: the config this verifier checks against.
        cache_size: the most tokens kept (0 disables the cache).
    """

    __slots__ = ("_algorithms", "_cache", "_key", "authorizer", "cache_size")

    def __init__(self, authorizer: JwtAuthorizer, *, cache_size: int = 4096) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        self.authorizer = authorizer
        self.cache_size = cache_size
        secret = _utf8(authorizer.secret)
        # Built directly, not with OctKey.import_key: that one warns about short secrets and
        # refuses PEM text, where the original accepts any non-empty bytes as the HMAC key.
        self._key: OctKey | None = OctKey(secret, secret) if secret else None
        allowed = {authorizer.algorithm} & _HMAC_ALGORITHMS
        self._algorithms = {name: JWSRegistry(algorithms=[name]).get_alg(name) for name in allowed}
        self._cache: OrderedDict[str, _CacheEntry] = OrderedDict()

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens the cache holds now."""
        return len(self._cache)

    def is_cached(self, token: str) -> bool:
        return token in self._cache

    def verify(self, token: str, now: float) -> Mapping[str, object]:
        """Verify ``token`` and return its claims (read-only, all claims, JSON types).

        Args:
            token: the bearer token (:func:`bearer_token`).
            now: epoch seconds.

        Raises:
            AuthError: 401 with the answer of the first failing check (module docstring).
                A failed token is never cached.
        """
        entry = self._cache.get(token)
        if entry is None:
            return self._verify_and_remember(token, now)
        claims, valid_from, valid_until = entry
        if not valid_from <= now < valid_until:
            self._cache.pop(token, None)
            raise _not_yet_valid() if now < valid_from else _expired()
        # try/except, not contextlib.suppress: this is the hot path and suppress costs ~1 µs.
        try:  # noqa: SIM105
            self._cache.move_to_end(token)
        except KeyError:  # dropped by a concurrent caller in between; nothing to refresh
            pass
        return claims

    def _verify_and_remember(self, token: str, now: float) -> Mapping[str, object]:
        parts = token.split(".")
        if len(parts) != 3:
            raise _invalid_jws("Invalid Compact JWS")
        header_segment, payload_segment, signature_segment = parts
        alg, encoded = _protected_header(header_segment)
        self._check_signature(alg, token, payload_segment, signature_segment, encoded=encoded)
        claims = _claims_set(payload_segment, encoded=encoded)
        authorizer = self.authorizer
        validate_claims(claims, issuer=authorizer.issuer, audience=authorizer.audience, now=now)
        frozen = MappingProxyType(claims)
        if self.cache_size:
            self._remember(token, frozen)
        return frozen

    def _check_signature(
        self, alg: str, token: str, payload_segment: str, signature_segment: str, *, encoded: bool
    ) -> None:
        if alg in _HMAC_ALGORITHMS and alg not in self._algorithms:
            # Deliberate difference (DESIGN.md; UPSTREAM.md §11 item 21): the original ignores
            # the configured algorithm. jose's answer for an allow-list miss.
            raise AuthError(
                "Algorithm not allowed",
                code="ERR_JOSE_ALG_NOT_ALLOWED",
                log=f"token alg {alg} is not the configured {self.authorizer.algorithm[:32]!r}",
            )
        if alg[:2] not in _SYMMETRIC_ALG_PREFIXES:
            raise _verification_failed(f"a shared secret cannot verify alg {alg[:32]!r}")
        # The signing input is header "." payload as they appear (RFC 7515 §5.2 step 8). jose
        # encodes a base64url payload with an ASCII-only encoder (TypeError otherwise) and a
        # b64:false one as UTF-8; the header already decoded, so it is ASCII.
        signing_input = token[: len(token) - len(signature_segment) - 1]
        if encoded and not payload_segment.isascii():
            raise _verification_failed("non-ASCII character in the payload segment")
        try:
            signature = _b64url_decode(signature_segment)
        except ValueError:
            raise _invalid_jws("Failed to base64url decode the signature") from None
        algorithm = self._algorithms.get(alg)
        if algorithm is None:
            raise _verification_failed(f"alg {alg[:32]!r} is not supported")
        if self._key is None:
            raise _verification_failed("the authorizer's secret is empty")
        if not algorithm.verify(_utf8(signing_input), signature, self._key):
            raise AuthError(
                "Signature verification failed", code="ERR_JWS_SIGNATURE_VERIFICATION_FAILED"
            )

    def _remember(self, token: str, claims: Mapping[str, object]) -> None:
        cache = self._cache
        cache[token] = (claims, *_validity_window(claims))
        while len(cache) > self.cache_size:
            try:
                cache.popitem(last=False)
            except KeyError:  # emptied by a concurrent caller
                break
