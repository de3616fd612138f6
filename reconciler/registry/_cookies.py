"""A cookie jar that keeps nothing.

Harbor's CSRF check rejects a write from a client that carries its session
cookie (`sid`) back, so no client of this project keeps cookies.
"""

from __future__ import annotations

import http.cookiejar
from http.client import HTTPResponse
from urllib.request import Request


class NoCookies(http.cookiejar.CookieJar):
    """Drops every cookie a server sets."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return

    def extract_cookies(self, response: HTTPResponse, request: Request) -> None:
        return
