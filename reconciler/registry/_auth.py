"""Authentication: anonymous, Basic, and Bearer tokens from the challenge's realm.

Bearer tokens are cached per set of scopes and reused for any request whose
scopes they cover. A token that is a JWT is read (not verified: only the
registry can do that) to find what it grants, so a refusal is reported before
the request that would fail: Harbor answers a wrong password with a token that
grants nothing rather than with 401.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from reconciler.registry._credentials import Credentials
from reconciler.registry._errors import (
    AuthenticationError,
    PermissionDeniedError,
    RegistryError,
    Reply,
    error_for_reply,
)

logger = logging.getLogger(__name__)

# repository path -> actions, e.g. {"library/x": {"pull", "push"}}
Scopes = Mapping[str, frozenset[str]]

_PARAM = re.compile(r'(\w+)="([^"]*)"')
_TOKEN_TEXT = re.compile(r"[!-~]+")  # visible ASCII, as RFC 6750's b64token
_DEFAULT_EXPIRY = 60  # seconds; the token spec's default when none is given
# Measured on docker-registry: the registry parses the token of every request,
# and its cost grows with the token's size; 25 repositories keep a token near
# 3 KB (and under HTTP/2's 4 KiB header table) while cutting token requests
# 25-fold.
SCOPES_PER_TOKEN = 25
SCOPE_CHARS_PER_TOKEN = 2000


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed `WWW-Authenticate` header."""

    scheme: str  # "basic" or "bearer"
    params: Mapping[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge:
        scheme, _, rest = header.strip().partition(" ")
        return cls(scheme.lower(), dict(_PARAM.findall(rest)))


@dataclass(slots=True)
class Token:
    """A bearer token, the scopes it was asked for, and what it grants."""

    value: str = field(repr=False)
    asked: Scopes
    granted: Scopes | None  # None when the token is opaque
    expires_at: float

    def covers(self, scopes: Scopes) -> bool:
        """Whether it was asked for at least `scopes` and is still fresh."""
        if not self.fresh:
            return False
        return all(
            actions <= self.asked.get(r, frozenset()) for r, actions in scopes.items()
        )

    @property
    def fresh(self) -> bool:
        """Whether it has not expired yet (with the renewal margin)."""
        return time.monotonic() < self.expires_at


def format_scopes(scopes: Scopes) -> list[str]:
    """The `scope` query parameters for a token request."""
    return [
        f"repository:{repo}:{','.join(sorted(actions))}"
        for repo, actions in sorted(scopes.items())
    ]


def batch_scopes(
    groups: Iterable[Scopes],
    *,
    size: int = SCOPES_PER_TOKEN,
    chars: int = SCOPE_CHARS_PER_TOKEN,
) -> list[dict[str, frozenset[str]]]:
    """Pack scope groups into sets small enough for one token request each.

    A group (say, the repository a manifest is pushed to and the one its
    blobs are mounted from) is never split: a request needs one token
    covering all of it. A set holds at most `size` repositories and `chars`
    characters of `scope` parameters, unless one group alone is larger:
    token URLs stay short for proxies, and tokens small, since every request
    carries one and the registry parses it.
    """
    batches: list[dict[str, frozenset[str]]] = []
    current: dict[str, frozenset[str]] = {}
    length = 0
    for group in groups:
        added = {r: a for r, a in group.items() if not a <= current.get(r, frozenset())}
        grown = len(current.keys() | added.keys())
        extra = sum(len(s) for s in format_scopes(added))
        if current and (grown > size or length + extra > chars):
            batches.append(current)
            current, length = {}, 0
            added, extra = dict(group), sum(len(s) for s in format_scopes(group))
        current = merge_scopes(current, added)
        length += extra
    return [*batches, current] if current else batches


def merge_scopes(*many: Scopes) -> dict[str, frozenset[str]]:
    """The union of scope sets."""
    merged: dict[str, frozenset[str]] = {}
    for scopes in many:
        for repo, actions in scopes.items():
            merged[repo] = merged.get(repo, frozenset()) | actions
    return merged


class Authenticator:
    """Finds the header that authenticates a request for some scopes."""

    def __init__(
        self,
        http: httpx.Client,
        host: str,
        credentials: Credentials | None,
        registry_is_tls: bool,
    ) -> None:
        self._http = http
        self._host = host
        self._credentials = credentials
        self._registry_is_tls = registry_is_tls
        self._challenge: Challenge | None = None
        self._store = _TokenStore()
        self._lock = threading.Lock()
        self._fetching: dict[frozenset[tuple[str, frozenset[str]]], threading.Lock] = {}

    @property
    def challenge(self) -> Challenge | None:
        return self._challenge

    @property
    def _tokens(self) -> list[Token]:
        """Every token held, each once; for inspection."""
        return self._store.all()

    def learn(self, challenge: Challenge | None) -> None:
        """Record how the registry asked to be authenticated (None: anonymous)."""
        self._challenge = challenge

    def header(self, scopes: Scopes, required: Scopes) -> dict[str, str]:
        """The Authorization header for a request needing `scopes`."""
        if self._challenge is None:
            return {}
        if self._challenge.scheme == "basic":
            return self._basic_header()
        if self._challenge.scheme == "bearer":
            return {"Authorization": f"Bearer {self._token(scopes, required).value}"}
        raise AuthenticationError(
            f"{self._host} asks for {self._challenge.scheme!r} authentication, "
            "which is not supported",
            hint="use Basic or Bearer token authentication",
        )

    def forget(self, scopes: Scopes) -> None:
        """Drop tokens covering `scopes`, after the registry refused one."""
        self._store.drop(scopes)

    def prefetch(self, scopes: Scopes) -> None:
        """Fetch one token for all of `scopes` now, unless they are covered.

        Only for Bearer challenges; later requests needing any subset of
        `scopes` reuse the token. Grants are checked per request, as usual.
        """
        if self._challenge is None or self._challenge.scheme != "bearer":
            return
        if scopes and self._store.find(scopes) is None:
            self._fetch_once(scopes)

    def uncovered(self, groups: Iterable[Scopes]) -> list[Scopes]:
        """The scope groups that no fresh token was asked for yet."""
        return [group for group in groups if group and self._store.find(group) is None]

    def _basic_header(self) -> dict[str, str]:
        if self._credentials is None:
            raise self._no_credentials()
        pair = f"{self._credentials.username}:{self._credentials.password}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}

    def _token(self, scopes: Scopes, required: Scopes) -> Token:
        token = self._store.find(scopes) or self._fetch_once(scopes)
        self._check_grant(token, required)
        return token

    def _fetch_once(self, scopes: Scopes) -> Token:
        """Fetch a token for `scopes`; threads asking for the same share one.

        Fetches for other scope sets go on meanwhile: no lock is held across
        the token request but the one for this scope set.
        """
        key = frozenset(scopes.items())
        with self._lock:
            fetching = self._fetching.setdefault(key, threading.Lock())
        with fetching:
            token = self._store.find(scopes)
            if token is None:
                token = self._fetch_token(scopes)
                self._store.add(token)
        return token

    def _fetch_token(self, scopes: Scopes) -> Token:
        assert self._challenge is not None
        realm = self._realm()
        service = self._challenge.params.get("service", "")
        params = httpx.QueryParams(
            [("service", service), *(("scope", s) for s in format_scopes(scopes))]
        )
        auth = None
        if self._credentials is not None:
            auth = httpx.BasicAuth(
                self._credentials.username, self._credentials.password
            )
        response = self._http.get(realm, params=params, auth=auth)
        logger.debug("token %s -> %d", realm, response.status_code)
        return self._token_from(response, scopes)

    def _realm(self) -> str:
        assert self._challenge is not None
        realm = self._challenge.params.get("realm", "")
        scheme = urlsplit(realm).scheme
        if scheme not in ("http", "https"):
            raise AuthenticationError(
                f"{self._host} gave a token realm {realm!r} that is not a URL"
            )
        # Credentials go to the realm; they must not travel in clear when the
        # registry itself was reached over TLS.
        if scheme == "http" and self._registry_is_tls:
            raise AuthenticationError(
                f"{self._host} sends clients to a token service over plain HTTP "
                f"({realm}); refusing to send credentials in clear",
                hint="configure the registry's token realm with https://",
            )
        return realm

    def _token_from(self, response: httpx.Response, scopes: Scopes) -> Token:
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"authentication failed for {self._who()} at {self._host}: the "
                f"token service answered {response.status_code}",
                hint="check the username and password",
                status=response.status_code,
            )
        if response.status_code != 200:
            reply = Reply(
                response.status_code,
                response.reason_phrase,
                response.headers,
                response.content,
            )
            raise error_for_reply(reply, f"get a token from {self._host}")
        try:
            body = response.json()
            value = str(body.get("token") or body["access_token"])
            expires_in = int(body.get("expires_in") or _DEFAULT_EXPIRY)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(
                f"the token service of {self._host} gave no token"
            ) from None
        if not _TOKEN_TEXT.fullmatch(value):
            # A CR or LF in it would split the requests it goes into.
            raise RegistryError(
                f"the token service of {self._host} gave a token with "
                "characters a token cannot hold (spaces, control characters "
                "or non-ASCII)",
                hint="the token service is broken, or not a token service",
            )
        margin = min(10.0, expires_in / 2)
        expires_at = time.monotonic() + expires_in - margin
        return Token(value, dict(scopes), _granted(value), expires_at)

    def _check_grant(self, token: Token, required: Scopes) -> None:
        if token.granted is None:
            return
        for repo, actions in sorted(required.items()):
            missing = actions - token.granted.get(repo, frozenset())
            if missing:
                raise self._refusal(token, repo, missing)

    def _refusal(
        self, token: Token, repo: str, missing: frozenset[str]
    ) -> RegistryError:
        assert token.granted is not None
        if self._credentials is None:
            return self._no_credentials()
        if not any(token.granted.values()):
            return AuthenticationError(
                f"authentication failed for {self._who()} at {self._host}: the "
                f"token service granted no access to {repo} (Harbor's answer "
                "to a wrong password, or to a user with no role in the project)",
                hint="check the username and password; robot accounts are "
                "named robot$project+name",
            )
        granted = ", ".join(sorted(token.granted.get(repo, frozenset()))) or "nothing"
        return PermissionDeniedError(
            f"{self._who()} may not {'/'.join(sorted(missing))} "
            f"{self._host}/{repo} (granted: {granted})",
            hint=f"give the user the {'/'.join(sorted(missing))} permission on "
            "the project, or use an account that has it",
        )

    def _no_credentials(self) -> AuthenticationError:
        return AuthenticationError(
            f"{self._host} requires authentication and no credentials are configured",
            hint="set credentials.username_env/password_env for the registry, "
            f"or run docker login {self._host}",
        )

    def _who(self) -> str:
        return (
            f"user {self._credentials.username!r}" if self._credentials else "anonymous"
        )


class _TokenStore:
    """Tokens indexed by the repositories they were asked for; thread-safe.

    Finding a token looks only at the tokens of one repository of the
    request, so the cost does not grow with the number of repositories.
    """

    def __init__(self) -> None:
        self._by_repo: dict[str, list[Token]] = {}
        self._lock = threading.Lock()

    def find(self, scopes: Scopes) -> Token | None:
        """A fresh token asked for at least `scopes`, if there is one."""
        repo = next(iter(scopes), "")
        with self._lock:
            candidates = list(self._by_repo.get(repo, ()))
        return next((t for t in candidates if t.covers(scopes)), None)

    def add(self, token: Token) -> None:
        """Keep `token`, dropping stale ones and those it makes redundant."""
        with self._lock:
            for repo in token.asked or {"": frozenset()}:
                kept = [
                    t
                    for t in self._by_repo.get(repo, ())
                    if t.fresh and not token.covers(t.asked)
                ]
                self._by_repo[repo] = [*kept, token]

    def all(self) -> list[Token]:
        """Every token held, each once."""
        with self._lock:
            held = [t for tokens in self._by_repo.values() for t in tokens]
        return list({id(t): t for t in held}.values())

    def drop(self, scopes: Scopes) -> None:
        """Forget every token covering `scopes`."""
        with self._lock:
            for repo, tokens in self._by_repo.items():
                self._by_repo[repo] = [t for t in tokens if not t.covers(scopes)]


def _granted(token: str) -> dict[str, frozenset[str]] | None:
    claims = _jwt_claims(token)
    if claims is None or not isinstance(claims.get("access"), list):
        return None
    granted: dict[str, frozenset[str]] = {}
    for entry in claims["access"]:
        if isinstance(entry, dict) and entry.get("type") == "repository":
            actions = frozenset(str(a) for a in entry.get("actions") or ())
            name = str(entry.get("name", ""))
            granted[name] = granted.get(name, frozenset()) | actions
    return granted


def _jwt_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None
