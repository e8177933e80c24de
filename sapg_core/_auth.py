"""Authorizers behind one interface, chosen by the config's ``authorizer.type``.

Each authenticator returns the verified claims or raises :class:`AuthError`
(401 with the original's body and code). Routes with ``auth: true`` and no
usable authorizer never reach here: compilation marks them as defects (fail
closed, unlike the original, which lets them through).
"""

from __future__ import annotations

from collections.abc import Generator

from ._auth0 import Auth0Authenticator
from ._events import Event
from ._flow import Authenticator, Claims, Request, Step
from ._jwt import HmacJwtVerifier, bearer_token
from ._model import Auth0Authorizer, Authorizer, JwtAuthorizer, SupabaseAuthorizer
from ._supabase import SupabaseAuthenticator

__all__ = ["JwtAuthenticator", "build_authenticator"]


class JwtAuthenticator:
    """``type: jwt``: an HMAC-signed Bearer token (UPSTREAM.md §7.1)."""

    def __init__(self, authorizer: JwtAuthorizer) -> None:
        self._verifier = HmacJwtVerifier(authorizer)

    def authenticate(self, request: Request) -> Generator[Step, Event, Claims]:
        return self._verifier.verify(bearer_token(request.event.headers), request.now)
        yield  # a generator that needs nothing from the world


def build_authenticator(authorizer: Authorizer | None) -> Authenticator | None:
    """The authenticator for a config's ``authorizer`` block (None: not available)."""
    if isinstance(authorizer, JwtAuthorizer):
        return JwtAuthenticator(authorizer)
    if isinstance(authorizer, Auth0Authorizer):
        return Auth0Authenticator(authorizer)
    if isinstance(authorizer, SupabaseAuthorizer):
        return SupabaseAuthenticator(authorizer)
    return None
