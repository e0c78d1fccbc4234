"""Process-wide Prometheus counters that actors and the HTTP layer both raise.

The app registers these collectors in its own registry (`simveb.http.app`); they are created
unregistered so several apps in one process (tests) can each expose them.
"""

from __future__ import annotations

from prometheus_client import Counter

ABUSE_BUDGET_HITS = Counter(
    "simveb_abuse_budget_hits",
    "Code or registration requests refused because an abuse budget was spent",
    labelnames=["budget"],
    registry=None,
)

RATELIMIT_LOCAL_FALLBACK = Counter(
    "simveb_ratelimit_local_fallback",
    "Requests limited by this process's own counts because the shared store (Redis) did not answer",
    registry=None,
)

ADDRESS_THROTTLE = Counter(
    "simveb_address_throttle",
    "Sign-in throttle of client addresses: a bucket emptied (once per episode) or an attempt refused",
    labelnames=["event"],
    registry=None,
)

COLLECTORS = (ABUSE_BUDGET_HITS, RATELIMIT_LOCAL_FALLBACK, ADDRESS_THROTTLE)
