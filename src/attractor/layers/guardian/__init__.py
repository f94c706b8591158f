"""Layer 1: the guardian owns one pipeline run.

It schedules ready nodes and spawns a runner for each (up to `max_agents`), runs the validation
commands of a node when its runner reports NODE_IMPL_COMPLETE, hands MERGE_READY branches to the
merge queue (whose MERGE_COMPLETE / MERGE_FAILED go straight to the runner), supervises its
runners, writes the checkpoint after every node change and ends the run when nothing more can
run. Restarted, it rebuilds its view from the checkpoint, the identity registry, the hooks and the
merge queue: live runners are re-adopted, merged nodes are never re-run, nothing merges twice.

One guardian per state directory: `guardian.lock` (an flock, released when the process dies) is
held for the guardian's whole life; a second guardian fails naming the live one.

Its jobs, one module each, built on one another in this order:

- `core`: the configuration, the start in a tmux session, the state every job shares;
- `target`: the target branch checked against the tip the queue last left (holds merging);
- `validation`: the validators of a node run on its reported commit;
- `merging`: the merge worker, and the settling of merged nodes;
- `scheduling`: a runner started for each ready node, paced;
- `supervising`: dead, stale and quarantined runners;
- `lifecycle`: the signals, the rebuild after a restart, the main loop and the run's end.
"""

from __future__ import annotations

from attractor.layers.guardian.core import GuardianConfig, guardian_argv, spawn_guardian
from attractor.layers.guardian.lifecycle import Guardian

__all__ = ["Guardian", "GuardianConfig", "guardian_argv", "spawn_guardian"]
