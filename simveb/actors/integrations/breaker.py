"""The circuit breaker the integrations actor keeps per registry (ANIP, DGI).

Closed: calls go through; failures are counted in a sliding window and N of them open it. Open:
calls are refused at once (no network) until the cool-down has passed. Half-open: exactly one call,
the probe, goes through; its success closes the breaker, its failure opens it again for another
cool-down. The state lives in memory: each process judges the registry from its own calls.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from simveb.actors.integrations.messages import BreakerState, BreakerStatus


class CircuitBreaker:
    """Failure counting and state for one external service. Not thread-safe: one event loop only."""

    def __init__(
        self,
        name: str,
        *,
        failures: int,
        window_s: float,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state: BreakerState = "closed"
        self.rejected = 0
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._probe_started: float | None = None

    def allow(self) -> bool:
        """May a call go out now? In half-open state this hands out the single probe slot."""
        now = self.clock()
        if self.state == "open":
            assert self._opened_at is not None
            if now - self._opened_at < self.cooldown_s:
                self.rejected += 1
                return False
            self.state = "half_open"
            self._probe_started = None
        if self.state == "half_open":
            # A probe whose caller vanished (cancelled) must not block the breaker forever: after a
            # cool-down without news another probe may go.
            if self._probe_started is not None and now - self._probe_started < self.cooldown_s:
                self.rejected += 1
                return False
            self._probe_started = now
        return True

    def succeeded(self) -> None:
        # A success closes a half-open breaker; in the closed state it does not wipe the window, so
        # a registry failing every other call still opens it.
        if self.state == "closed":
            return
        self.state = "closed"
        self._failures.clear()
        self._opened_at = None
        self._probe_started = None

    def failed(self) -> None:
        now = self.clock()
        if self.state == "half_open":
            self._open(now)
            return
        self._failures.append(now)
        self._trim(now)
        if len(self._failures) >= self.threshold:
            self._open(now)

    def released(self) -> None:
        """The allowed call ended without a verdict (cancelled): free the probe slot."""
        self._probe_started = None

    def _open(self, now: float) -> None:
        self.state = "open"
        self._opened_at = now
        self._probe_started = None
        self._failures.clear()

    def _trim(self, now: float) -> None:
        while self._failures and now - self._failures[0] > self.window_s:
            self._failures.popleft()

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self.state != "open" or self._opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self._opened_at))

    def status(self) -> BreakerStatus:
        now = self.clock()
        self._trim(now)
        state: BreakerState = self.state
        opened = probe = None
        if self._opened_at is not None:
            # Monotonic instants become wall-clock times for people reading the status.
            wall = datetime.now(UTC).timestamp()
            opened = datetime.fromtimestamp(wall - (now - self._opened_at), UTC)
            probe = datetime.fromtimestamp(wall - (now - self._opened_at) + self.cooldown_s, UTC)
            if state == "open" and now - self._opened_at >= self.cooldown_s:
                state = "half_open"  # the next call will be the probe
        return BreakerStatus(
            state=state,
            recent_failures=len(self._failures),
            opened_at=opened,
            probe_at=probe if state == "open" else None,
            rejected=self.rejected,
        )
