"""The target branch moves only through the merge queue: the tip the queue last left, and
the hold that stops merging when anything else moved it or dirtied its checkout.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from attractor import gitops
from attractor.errors import AttractorError
from attractor.layers.guardian.core import TIP_REFRESH_INTERVAL, GuardianBase
from attractor.store import checkpoint as cp_store
from attractor.store import merge_entries, queue_hold

logger = logging.getLogger(__name__)


class TargetWatch(GuardianBase):
    """Checks the target branch against the tip the queue last left there."""

    _common_dir: Path | None = None
    _tip_cache: tuple[gitops.RefStamp, float, str | None] | None = None  # (stamp, when, tip)

    # -- the target branch: moved only by the queue -------------------------------------------
    @property
    def expected_tip(self) -> str | None:
        return self._expected_tip

    @expected_tip.setter
    def expected_tip(self, tip: str | None) -> None:
        """Where the queue last left the target; published for runners, which start new node
        branches from it (never from a target that a commit outside the queue polluted)."""
        if tip != self._expected_tip and tip is not None:
            try:
                queue_hold.write_trusted_tip(self.state, tip)
            except AttractorError as exc:
                logger.warning("publishing the trusted tip: %s", exc)
        self._expected_tip = tip

    def target_tip(self) -> str | None:
        """The target's tip; asked of git only when the files holding the ref changed (see
        `gitops.ref_stamp`) or TIP_REFRESH_INTERVAL after the last question."""
        ref = f"refs/heads/{self.cp.target_branch}"
        if self._common_dir is None:
            self._common_dir = gitops.open_repo(self.target_dir).common_dir
        stamp = gitops.ref_stamp(self._common_dir, ref)
        now = time.monotonic()
        cached = self._tip_cache
        if cached is not None and cached[0] == stamp and now - cached[1] < TIP_REFRESH_INTERVAL:
            return cached[2]
        tip = gitops.rev_parse(self.target_dir, ref)
        self._tip_cache = (stamp, now, tip)
        return tip

    def hold_queue(self, reason: str, found: str | None, *, again: bool = False) -> None:
        if found is not None and found in self.alerted_tips and not again:
            return
        if found is not None:
            self.alerted_tips.add(found)
        queue_hold.hold(self.state, reason, target=self.cp.target_branch, expected=self.expected_tip, found=found,
                        held_by=self.cfg.agent_id, repo=str(self.target_dir))
        self.alert("target_moved", f"{reason}; merging is held until a human runs: attractor merge-queue resume",
                   expected=self.expected_tip, found=found)

    def check_target_tip(self, *, after_merge: str | None = None) -> None:
        """The target must be where the queue put it. After a merge: exactly the merged commit.
        Between merges: unchanged since the queue last moved it."""
        tip = self.target_tip()
        if self.expected_tip is None and after_merge is None:
            self.expected_tip = self.known_tip(tip)
        if after_merge is None and tip is not None and tip != self.expected_tip \
                and queue_hold.read(self.state) is None and queue_hold.accepted_tip(self.state) == tip:
            self.expected_tip = tip  # a human resumed the queue at exactly this tip
            self.alerted_tips.discard(tip)
        if after_merge is not None:
            if tip != after_merge:
                self.hold_queue(f"after merging {after_merge[:12]} the tip of {self.cp.target_branch} is "
                                f"{(tip or 'missing')[:12]}", tip)
            self.expected_tip = tip
            return
        if self.expected_tip is None:
            self.expected_tip = tip
            return
        if tip != self.expected_tip and queue_hold.read(self.state) is None and tip not in self.alerted_tips:
            self.hold_queue(f"{self.cp.target_branch} moved from {self.expected_tip[:12]} to {(tip or 'nothing')[:12]} "
                            "outside the merge queue", tip)

    def check_target_clean(self) -> None:
        """A checked-out target with uncommitted changes would fail every merge (and burn the
        node's attempts): hold the queue with one alert until a human has cleaned it up."""
        dirty = gitops.dirty_checkout_of(self.target_dir, self.cp.target_branch)
        if dirty is None or queue_hold.read(self.state) is not None:
            return
        where, files = dirty
        reason = (f"{self.cp.target_branch} is checked out in {where} with uncommitted changes "
                  f"({', '.join(files[:5])}); commit or stash them")
        queue_hold.hold(self.state, reason, target=self.cp.target_branch, expected=self.expected_tip,
                        found=self.target_tip(), held_by=self.cfg.agent_id, repo=str(self.target_dir))
        self.alert("dirty_target", f"{reason}; merging is held until a human runs: attractor merge-queue resume")

    def known_tip(self, tip: str | None) -> str | None:
        """At start (a restarted guardian too): the tip is one the queue put there, or the tip
        of a launch of this run; else the last of those, so the check below raises the alert."""
        if tip is None:
            return None
        launched = [str(e.get("target_tip")) for e in cp_store.read_events(self.state, self.cfg.run_id)
                    if e.get("event") == "launched" and e.get("target_tip")]
        try:
            landed = {e.outcome.merged_sha for e in merge_entries.list_entries(self.state)
                      if e.outcome is not None and e.outcome.merged_sha}
        except AttractorError:
            landed = set()
        if tip in landed or tip in launched or not launched:
            return tip

        # the newest known tip the found one descends from: where the queue last left it
        best: str | None = None
        for candidate in {*landed, *launched}:
            if gitops.is_ancestor(self.target_dir, candidate, tip) and (
                    best is None or gitops.is_ancestor(self.target_dir, best, candidate)):
                best = candidate
        if best is not None:
            return best
        return launched[-1]

    def wait_while_held(self) -> None:
        """Block the merge worker while the queue is held (checked twice a second)."""
        announced = False
        while not self.stop_event.is_set():
            held = queue_hold.read(self.state)
            if held is None:
                if announced:
                    # the tip the human accepted when resuming; a commit after that is held again
                    accepted = queue_hold.accepted_tip(self.state) or self.target_tip()
                    logger.warning("guardian: the merge queue was resumed at %s", accepted)
                    self.expected_tip = accepted
                    self.alerted_tips.clear()
                return
            if not announced:
                logger.warning("guardian: merging is held: %s", held.reason)
                announced = True
            self.stop_event.wait(0.5)
