"""When and how long to retry.

Retried: 429, 502, 503 and 504, and connections dropped or reset, for
requests that are safe to repeat. Waits grow exponentially with jitter, a
`Retry-After` from the server replaces the computed wait, and everything
stops at an overall deadline. TLS and refused connections are not retried:
they do not heal in seconds and the user should hear at once.
"""

from __future__ import annotations

import email.utils
import errno
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import stamina

from reconciler.registry._errors import Reply

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})

# A read is safe to repeat, so a 500 on one is retried too: Distribution's
# filesystem storage answers 500 ("invalid checksum digest format") when it
# reads a link file that a concurrent write of the same manifest is rewriting.
READ_RETRY_STATUSES = RETRY_STATUSES | {500}


def retry_statuses(method: str) -> frozenset[int]:
    """The statuses worth retrying for a request of `method`."""
    return READ_RETRY_STATUSES if method in ("GET", "HEAD") else RETRY_STATUSES


class RetryableStatus(Exception):
    """A response worth retrying; carries it so the last one can be reported."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts, deadline in seconds, and backoff bounds."""

    attempts: int = 8
    deadline: float = 120.0
    wait_initial: float = 0.2
    wait_max: float = 10.0

    def call(
        self, action: Callable[[], T], also: Callable[[Exception], bool] | None = None
    ) -> T:
        """Run `action`, retrying it as the policy allows, and when `also` says so.

        The first try runs on its own: nearly every request succeeds at
        once, and a retry context costs a third of the CPU of a HEAD
        (measured), so it is set up only after a failure worth retrying.
        """
        started = time.monotonic()
        hook = _backoff_hook(started, self.deadline, also)
        try:
            return action()
        except Exception as error:
            decision = hook(error)
            left = self.deadline - (time.monotonic() - started)
            if decision is False or self.attempts <= 1 or left <= 0:
                raise
            logger.info("trying again after: %s", error)
        if not stamina.is_testing():  # which makes every wait zero
            time.sleep(self.wait_initial if decision is True else decision)
        for attempt in stamina.retry_context(
            on=hook,
            attempts=self.attempts - 1,
            timeout=max(self.deadline - (time.monotonic() - started), 0.001),
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
        ):
            with attempt:
                return action()
        raise AssertionError("unreachable: retry_context raises or returns")


def _backoff_hook(
    started: float, deadline: float, also: Callable[[Exception], bool] | None
) -> Callable[[Exception], bool | float]:
    def hook(error: Exception) -> bool | float:
        if also is not None and also(error):
            return True
        if isinstance(error, RetryableStatus):
            wait = retry_after(error.reply.headers)
            if wait is None:
                return True
            if time.monotonic() - started + wait > deadline:
                return False  # waiting would pass the deadline: give up now
            logger.info("registry asked to wait %.1fs (Retry-After)", wait)
            return wait
        return is_transient(error)

    return hook


def is_transient(error: BaseException) -> bool:
    """Whether a transport error may heal on its own."""
    if not isinstance(error, httpx.TransportError):
        return False
    if isinstance(error, httpx.ConnectError):
        return not _is_tls_or_refused(error)
    return isinstance(
        error,
        httpx.ReadError
        | httpx.WriteError
        | httpx.RemoteProtocolError
        | httpx.TimeoutException,
    )


def _is_tls_or_refused(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        if isinstance(cause, ConnectionRefusedError):
            return True
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return True
        cause = cause.__cause__ or cause.__context__
    text = str(error)
    return "CERTIFICATE" in text or "SSL" in text or "Connection refused" in text


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a `Retry-After` header (delta or HTTP date), if any."""
    value = headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
