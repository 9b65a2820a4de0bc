"""How many wrong passwords the sign-in form takes before it asks the sender to wait.

Each guess costs the server a scrypt hash (~0.14 s of a core), and nothing else stands between a
password and a guesser. Failures are counted per email typed, so one account cannot be guessed at
quickly, and per client address, so one client cannot keep the workers hashing. A blocked attempt
is answered 429 before any hash is computed. Counts live in each worker's memory, like the API's
rate limits: with N workers a guesser gets up to N times these allowances.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable

from service.ratelimit import RateLimiter

# An email: 10 wrong passwords in a row, then one more a minute.
EMAIL_BURST, EMAIL_PER_SECOND = 10, 1 / 60
# A client address: more, but not a stream of hashes. Behind a proxy it is the proxy's, shared
# by everyone, unless COPYBANDIT_TRUSTED_PROXIES lets the app read the client's.
ADDRESS_BURST, ADDRESS_PER_SECOND = 30, 1 / 6


class SignInLimits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_email = RateLimiter(EMAIL_PER_SECOND, EMAIL_BURST, clock)
        self._by_address = RateLimiter(ADDRESS_PER_SECOND, ADDRESS_BURST, clock)

    def wait(self, *, email: str, address: str | None) -> float:
        """Seconds before this email may be tried from this address again; 0.0: now."""
        return max(
            self._by_email.wait(_email_key(email)), self._by_address.wait(_address_key(address))
        )

    def failed(self, *, email: str, address: str | None) -> None:
        self._by_email.take(_email_key(email))
        self._by_address.take(_address_key(address))


def _email_key(email: str) -> str:
    # As service.marketers.sign_in looks it up, and as a digest: the box takes whatever is typed
    # into it, up to the body limit, and each wrong sign-in kept its text here (a MiB apiece, up
    # to 10,000 of them per worker).
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _address_key(address: str | None) -> str:
    """The client: its IPv4 address, or the /64 network of its IPv6 one. One IPv6 host is given
    a /64 of its own and may send from any address in it, so per address it had 2**64 allowances;
    an IPv4 client on a dual-stack socket comes as ::ffff:a.b.c.d, and is counted as a.b.c.d."""
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""  # not an IP address (a Unix socket's peer): counted as it is
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)
