"""JSON Web Key Sets (RFC 7517 §5): parsing, key selection, a cache for remote sets, JWS checks.

Theory of operation
-------------------
The original hands jose a ``createRemoteJWKSet(jwks_uri)`` built anew for every request, so it
downloads the key set on every authenticated request (UPSTREAM.md §7.2, §11 item 17). Here one
:class:`JwksCache` per gateway keeps remote key sets across requests. Its rules are jose's own
``RemoteJWKSet`` rules, applied across requests instead of within one:

1. A fetched key set is *fresh* for ``max_age`` seconds (default 600). A ``Cache-Control:
   max-age=N`` on the JWKS response shortens that to N (never lengthens it); ``no-store`` or
   ``no-cache`` make it 0. A request that finds no fresh set fetches one before selecting a key.
2. A token whose key is not in a fresh set (no key fits its ``kid``/``alg``) causes one refetch,
   unless the set was fetched less than ``cooldown`` seconds ago (default 30): then the answer is
   "No matching key" at once. A rotated-in key is found on its first use, and a flood of tokens
   with made-up ``kid`` values costs at most one fetch per cool-down.
3. Single-flight: the fetch leaves the flow as ``Shared(key="jwks:" + uri, action=SendHTTP(..))``.
   The gateway sends one request for it and parks every other flow that asks meanwhile; all of
   them get the one outcome. The first to read the outcome parses and stores it; the others find
   it stored (the same event object) and reuse it.
4. Time comes only from events (``now``); nothing here reads a clock.

Key selection is jose's ``LocalJWKSet.getKey``, whose answers clients see: the key type follows
the ``alg`` prefix (RS/PS: RSA, ES: EC, Ed: OKP), then ``kid`` (when the token has one), the JWK's
``alg`` (when it has one), ``use`` (must be ``sig`` when present), ``key_ops`` (must hold
``verify`` when present) and the curve (ES256: P-256, ES384: P-384, EdDSA: Ed25519) filter the
keys. None left: "No matching key"; more than one: "Multiple matching keys"; a key with private
members: "Invalid JWKS".

Algorithms (RFC 7518 §3.1, RFC 8037): the allow-list is :data:`ALLOWED_JWS_ALGORITHMS`. ``none``
and HMAC are refused with the original's answer (jose cannot pick a JWKS key for them: "JWT
verification failed"); ES512 and Ed25519, which the original would take, get jose's answer for an
allow-list miss, "Algorithm not allowed". Signatures are checked by joserfc; RSA keys under 2048
bits are refused as jose refuses them.

Errors are :class:`AuthError` values with jose's texts and codes (UPSTREAM.md §6.2), so callers
with another error vocabulary (the ``supabase`` authorizer) can translate them by ``code``.

Public within the core: :class:`KeySet`, :class:`JwksPolicy`, :class:`JwksCache`,
:class:`KeySource` with :class:`StaticJwks` and :class:`RemoteJwks`, :func:`verify_jws`,
:func:`json_body`.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Mapping, Sequence
from typing import Final, Protocol

import attrs
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from ._actions import LogLevel, SendHTTP
from ._errors import AuthError
from ._events import ActionFailed, Event, HTTPResponseReceived
from ._flow import Shared, Step
from ._jwt import (
    _JSON,
    _b64url_decode,
    _claims_set,
    _invalid_jws,
    _json_object,
    _protected_header,
    _utf8,
    _verification_failed,
)

__all__ = [
    "ALLOWED_JWS_ALGORITHMS",
    "JwksCache",
    "JwksPolicy",
    "KeySet",
    "KeySource",
    "RemoteJwks",
    "StaticJwks",
    "VerifyingKey",
    "json_body",
    "verify_jws",
]

VerifyingKey = RSAKey | ECKey | OKPKey

#: The JWS algorithms a key set may verify.
ALLOWED_JWS_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)
#: Algorithms the original (jose 6) would verify with a JWKS but the allow-list leaves out.
_ACCEPTED_BY_ORIGINAL: Final = frozenset({"ES512", "Ed25519"})
_ALGORITHMS: Final = {name: JWSRegistry.algorithms[name] for name in ALLOWED_JWS_ALGORITHMS}
_KEY_TYPES: Final = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CURVES: Final = {"ES256": "P-256", "ES384": "P-384", "EdDSA": "Ed25519"}
_IMPORTERS: Final[dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]]] = {
    "RSA": RSAKey,
    "EC": ECKey,
    "OKP": OKPKey,
}
#: The public members of each key type (RFC 7518 §6.2.1, §6.3.1; RFC 8037 §2).
_PUBLIC_MEMBERS: Final = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}
_MIN_RSA_BITS: Final = 2048
_MAX_AGE_DIRECTIVE: Final = re.compile(r"^\s*max-age\s*=\s*\"?(\d+)\"?\s*$", re.IGNORECASE)


# --- answers (UPSTREAM.md §6.2) ------------------------------------------------------------------


class _NoMatchingKey(AuthError):
    """jose's JWKSNoMatchingKey; the only error that may cause a refetch."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "No matching key found in JWKS.", code="ERR_JWKS_NO_MATCHING_KEY", log=detail
        )


def _invalid_jwks(detail: str) -> AuthError:
    # The key set is the provider's (or the operator's), not the client's: WARNING.
    return AuthError("Invalid JWKS", code="ERR_JWKS_INVALID", log=detail, level=LogLevel.WARNING)


def _multiple_keys(detail: str) -> AuthError:
    return AuthError(
        "Multiple matching keys found in JWKS.",
        code="ERR_JWKS_MULTIPLE_MATCHING_KEYS",
        log=detail,
        level=LogLevel.WARNING,
    )


def _provider_fault(error: AuthError) -> AuthError:
    """``error``, logged at WARNING: the key set could not be fetched or used (not the client)."""
    error.log_level = LogLevel.WARNING
    return error


# --- key sets ------------------------------------------------------------------------------------


def _fits(jwk: Mapping[str, object], *, alg: str, kty: str, kid: str | None) -> bool:
    """jose's candidate filter for one JWK (see the module docstring)."""
    if jwk.get("kty") != kty:
        return False
    if kid is not None and jwk.get("kid") != kid:
        return False
    declared = jwk.get("alg")
    if isinstance(declared, str) and declared != alg:
        return False
    use = jwk.get("use")
    if isinstance(use, str) and use != "sig":
        return False
    operations = jwk.get("key_ops")
    if isinstance(operations, list) and "verify" not in operations:
        return False
    curve = _CURVES.get(alg)
    return curve is None or jwk.get("crv") == curve


def _rsa_bits(jwk: Mapping[str, object]) -> int:
    modulus = jwk.get("n")
    if not isinstance(modulus, str):
        return 0
    try:
        return int.from_bytes(_b64url_decode(modulus), "big").bit_length()
    except ValueError:
        return 0


class KeySet:
    """A parsed JWKS document; imported keys are kept per (key, algorithm).

    Fields:
        keys: the document's ``keys`` members, as parsed JSON objects.
    """

    __slots__ = ("_imported", "keys")

    def __init__(self, keys: Sequence[Mapping[str, object]]) -> None:
        self.keys: tuple[Mapping[str, object], ...] = tuple(keys)
        self._imported: dict[tuple[int, str], VerifyingKey] = {}

    @classmethod
    def parse(cls, document: object) -> KeySet:
        """A key set from a parsed JWKS document.

        Raises:
            AuthError: 401 ``Invalid JWKS`` when ``document`` is not an object whose ``keys`` is
                an array of objects (jose's ``isJWKSLike``).
        """
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list) or not all(isinstance(key, dict) for key in keys):
            raise _invalid_jwks("JSON Web Key Set malformed")
        return cls(keys)

    @property
    def kids(self) -> frozenset[str]:
        """The ``kid`` values present (keys without one are left out)."""
        return frozenset(kid for jwk in self.keys if isinstance(kid := jwk.get("kid"), str))

    def select(self, alg: str, kid: str | None) -> VerifyingKey:
        """The one key that may verify a token with this ``alg`` and ``kid``.

        Raises:
            AuthError: "No matching key found in JWKS.", "Multiple matching keys found in JWKS.",
                "Invalid JWKS" (a private key), or "JWT verification failed" (an ``alg`` with no
                key type, or a key that cannot be imported).
        """
        kty = _KEY_TYPES.get(alg[:2])
        if kty is None:
            raise _verification_failed(f"alg {alg[:32]!r} has no JWKS key type")
        found = [i for i, jwk in enumerate(self.keys) if _fits(jwk, alg=alg, kty=kty, kid=kid)]
        wanted = f"kid {kid[:64]!r}" if kid is not None else "no kid"
        if not found:
            raise _NoMatchingKey(f"no {kty} key in the JWKS fits alg {alg} and {wanted}")
        if len(found) > 1:
            raise _multiple_keys(f"{len(found)} keys in the JWKS fit alg {alg} and {wanted}")
        return self._imported.get((found[0], alg)) or self._import(found[0], alg, kty)

    def _import(self, index: int, alg: str, kty: str) -> VerifyingKey:
        jwk = self.keys[index]
        if jwk.get("d"):
            raise _invalid_jwks("JSON Web Key Set members must be public keys")
        if kty == "RSA" and (bits := _rsa_bits(jwk)) and bits < _MIN_RSA_BITS:
            raise _provider_fault(
                _verification_failed(f"{alg} requires an RSA modulus of 2048 bits, not {bits}")
            )
        public: dict[str, str | list[str]] = {
            name: value for name in _PUBLIC_MEMBERS[kty] if isinstance(value := jwk.get(name), str)
        }
        try:
            key = _IMPORTERS[kty].import_key(public)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise _provider_fault(
                _verification_failed(f"JWKS key {index} cannot be imported: {exc}")
            ) from None
        self._imported[(index, alg)] = key
        return key


# --- key sources -------------------------------------------------------------------------------

KeyLookup = Generator[Step, Event, tuple[KeySet, VerifyingKey]]


class KeySource(Protocol):
    """Where a verifier gets keys: a static set, or a remote one through a :class:`JwksCache`."""

    def key_for(self, *, alg: str, kid: str | None, request_id: int, now: float) -> KeyLookup:
        """The key set in use and its key for ``alg``/``kid``; may fetch (a flow step)."""
        ...

    def current(self, now: float) -> KeySet | None:
        """The key set that would be used at ``now`` without fetching, or None."""
        ...


class StaticJwks:
    """A key set given in the config (``jwks``): never fetched, never stale."""

    __slots__ = ("key_set",)

    def __init__(self, key_set: KeySet) -> None:
        self.key_set = key_set

    def key_for(self, *, alg: str, kid: str | None, request_id: int, now: float) -> KeyLookup:
        return self.key_set, self.key_set.select(alg, kid)
        yield  # a generator that needs nothing from the world

    def current(self, now: float) -> KeySet | None:
        return self.key_set


@attrs.frozen(kw_only=True)
class JwksPolicy:
    """How long remote key sets are trusted and how often they may be fetched (seconds).

    Fields:
        max_age: a fetched set is used this long at most (a shorter Cache-Control max-age wins).
        cooldown: after a fetch, a token with an unknown key does not cause another for this long.
        timeout: the fetch's timeout (jose's default).
    """

    max_age: float = 600.0
    cooldown: float = 30.0
    timeout: float = 5.0


@attrs.frozen(kw_only=True)
class _Entry:
    key_set: KeySet
    fetched_at: float
    fresh_until: float
    source: HTTPResponseReceived


def _max_age(headers: Sequence[tuple[str, str]]) -> float | None:
    """Cache-Control's max-age in seconds (``no-store``/``no-cache``: 0), or None."""
    found: float | None = None
    for name, value in headers:
        if name != "cache-control":
            continue
        for directive in value.split(","):
            word = directive.strip().lower()
            if word in ("no-store", "no-cache"):
                return 0.0
            match = _MAX_AGE_DIRECTIVE.match(directive)
            if match and found is None:
                found = float(match.group(1))
    return found


def json_body(body: bytes) -> object:
    """``Response.json()``: UTF-8 (bad bytes replaced, a BOM dropped), then ``JSON.parse``.

    Raises:
        ValueError: the body is not JSON.
    """
    text = body.decode("utf-8", "replace").removeprefix("\ufeff")
    try:
        return _JSON.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class JwksCache:
    """Remote key sets by URI for one gateway: max-age, cool-down and single-flight fetching.

    The rules are in the module docstring. Use it through :class:`RemoteJwks`, or call
    :meth:`key_for` from a flow with ``yield from``.
    """

    def __init__(self, policy: JwksPolicy | None = None) -> None:
        self.policy = policy if policy is not None else JwksPolicy()
        self._entries: dict[str, _Entry] = {}

    def current(self, uri: str, now: float) -> KeySet | None:
        """The fresh key set for ``uri`` at ``now``, or None (absent or stale)."""
        entry = self._entries.get(uri)
        return entry.key_set if entry is not None and now < entry.fresh_until else None

    def fetched_at(self, uri: str) -> float | None:
        """When the stored set for ``uri`` was fetched (the outcome's ``now``), or None."""
        entry = self._entries.get(uri)
        return None if entry is None else entry.fetched_at

    def key_for(
        self, uri: str, *, alg: str, kid: str | None, request_id: int, now: float
    ) -> KeyLookup:
        """The key for ``alg``/``kid`` from the set at ``uri``, fetching when the rules say so.

        Raises:
            AuthError: the set cannot be fetched or parsed, or has no (single, public) key that
                fits; see the module docstring.
        """
        entry = self._entries.get(uri)
        if entry is None or now >= entry.fresh_until:
            entry = yield from self._fetch(uri, request_id)
        try:
            return entry.key_set, entry.key_set.select(alg, kid)
        except _NoMatchingKey:
            if now < entry.fetched_at + self.policy.cooldown:
                raise
        entry = yield from self._fetch(uri, request_id)
        return entry.key_set, entry.key_set.select(alg, kid)

    def _fetch(self, uri: str, request_id: int) -> Generator[Step, Event, _Entry]:
        action = SendHTTP(
            request_id=request_id,
            method="GET",
            url=uri,
            headers=(("accept", "application/json"), ("user-agent", "sapg")),
            timeout=self.policy.timeout,
        )
        outcome = yield Shared(key="jwks:" + uri, action=action)
        return self._store(uri, outcome)

    def _store(self, uri: str, outcome: Event) -> _Entry:
        known = self._entries.get(uri)
        if known is not None and known.source is outcome:
            return known  # another request of the same fetch stored it already
        if isinstance(outcome, ActionFailed):
            raise _provider_fault(
                _verification_failed(
                    f"JWKS {uri}: fetch failed: {outcome.reason.value}: {outcome.detail}"
                )
            )
        assert isinstance(outcome, HTTPResponseReceived)
        if outcome.status != 200:  # jose: "Expected 200 OK from the JSON Web Key Set HTTP response"
            raise _provider_fault(
                _verification_failed(f"JWKS {uri}: answered {outcome.status}, not 200")
            )
        try:
            document = json_body(outcome.body)
        except ValueError:
            raise _provider_fault(
                _verification_failed(f"JWKS {uri}: the answer is not JSON")
            ) from None
        try:
            key_set = KeySet.parse(document)
        except AuthError:
            raise _invalid_jwks(f"JWKS {uri}: the answer is not a JSON Web Key Set") from None
        max_age = self.policy.max_age
        declared = _max_age(outcome.headers)
        if declared is not None:
            max_age = min(max_age, declared)
        entry = _Entry(
            key_set=key_set,
            fetched_at=outcome.now,
            fresh_until=outcome.now + max_age,
            source=outcome,
        )
        self._entries[uri] = entry
        return entry


class RemoteJwks:
    """The key set at ``uri`` (``jwks_uri``), through a shared :class:`JwksCache`."""

    __slots__ = ("cache", "uri")

    def __init__(self, cache: JwksCache, uri: str) -> None:
        self.cache = cache
        self.uri = uri

    def key_for(self, *, alg: str, kid: str | None, request_id: int, now: float) -> KeyLookup:
        return (
            yield from self.cache.key_for(
                self.uri, alg=alg, kid=kid, request_id=request_id, now=now
            )
        )

    def current(self, now: float) -> KeySet | None:
        return self.cache.current(self.uri, now)


# --- JWS verification ------------------------------------------------------------------------


def _kid(header_segment: str) -> str | None:
    header = _json_object(_b64url_decode(header_segment))  # already checked by _protected_header
    kid = header.get("kid") if header is not None else None
    return kid if isinstance(kid, str) else None


def verify_jws(
    token: str, keys: KeySource, *, request_id: int, now: float
) -> Generator[Step, Event, tuple[dict[str, object], KeySet]]:
    """Check a compact JWS against ``keys``; return its claims set and the key set used.

    The claims are decoded but not validated (no ``iss``/``aud``/``exp`` checks: the caller's).
    The checks run in jose's order (structure, header, algorithm, key, signature, payload), and
    the first failure decides the answer.

    Raises:
        AuthError: 401 with jose's text and code (UPSTREAM.md §6.2).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid_jws("Invalid Compact JWS")
    header_segment, payload_segment, signature_segment = parts
    alg, encoded = _protected_header(header_segment)
    algorithm = _ALGORITHMS.get(alg)
    if algorithm is None:
        if alg in _ACCEPTED_BY_ORIGINAL:
            raise AuthError(
                "Algorithm not allowed",
                code="ERR_JOSE_ALG_NOT_ALLOWED",
                log=f"token alg {alg} is not in the allow-list",
            )
        raise _verification_failed(f"alg {alg[:32]!r} cannot be verified with a JWKS")
    key_set, key = yield from keys.key_for(
        alg=alg, kid=_kid(header_segment), request_id=request_id, now=now
    )
    if encoded and not payload_segment.isascii():
        raise _verification_failed("non-ASCII character in the payload segment")
    try:
        signature = _b64url_decode(signature_segment)
    except ValueError:
        raise _invalid_jws("Failed to base64url decode the signature") from None
    signing_input = token[: len(token) - len(signature_segment) - 1]
    try:
        valid = algorithm.verify(_utf8(signing_input), signature, key)
    except (JoseError, ValueError, TypeError) as exc:
        raise _verification_failed(f"{alg} verification failed: {exc}") from None
    if not valid:
        raise AuthError(
            "Signature verification failed", code="ERR_JWS_SIGNATURE_VERIFICATION_FAILED"
        )
    return _claims_set(payload_segment, encoded=encoded), key_set
