"""Patience with a full disk, for the control loops.

A state write that fails with ENOSPC or EDQUOT (`errors.NoSpaceError`) is not a crash of a
control loop: the loop keeps its process alive, raises one alert (a log line at ERROR) until
space returns, waits with a growing delay (0.5 s doubling to 10 s) and tries the same work again;
when an iteration goes through, it says so once. A command run by hand fails at once instead
(`error: no space left on device writing <path>`, exit 1).
"""

from __future__ import annotations

import logging

from attractor.errors import NoSpaceError

logger = logging.getLogger(__name__)

FIRST_WAIT = 0.5
LONGEST_WAIT = 10.0


class DiskPatience:
    def __init__(self, who: str) -> None:
        self.who = who
        self.failures = 0

    def hit(self, exc: NoSpaceError) -> float:
        """Note a failed write; returns how long to wait before trying again."""
        if self.failures == 0:
            logger.error("%s: ALERT: %s; waiting for space, the work goes on when it returns", self.who, exc)
        self.failures += 1
        return min(LONGEST_WAIT, FIRST_WAIT * float(2 ** min(self.failures - 1, 8)))

    def ok(self) -> None:
        """An iteration went through."""
        if self.failures:
            logger.warning("%s: space is back after %d failed write(s); going on", self.who, self.failures)
            self.failures = 0
