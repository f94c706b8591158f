"""Every name a run gives its parts, in one place.

A run `<run>` on a target repository `<target>` is laid out as:

- agent ids: `guardian-<run>`, `runner-<node>`, `orchestrator-<node>` (`names.agent_id`);
- branches: `attractor/<run>/<node>` (`gitops.branch_name`);
- worktrees: `<target>/.claude/worktrees/<node>`, and the guardian's validation trees
  `<target>/.claude/worktrees/_validate-<node>` (node names start with a letter or digit, so
  the two never clash);
- tmux sessions: `att-<run>-<role>-<node>` with the roles `guardian` (node `main`), `runner` and
  `orch`; `.` and `:` are target separators in tmux, so they become `_`;
- the environment an agent starts with: `names.ENV_*`.

Nothing else formats these names: every layer asks this module.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from attractor import names
from attractor.store.statedir import StateDir

VALIDATION_PREFIX = "_validate-"
SESSION_ROLES = ("guardian", "runner", "orch")
GUARDIAN_SESSION_NODE = "main"


def guardian_id(run_id: str) -> str:
    return names.agent_id("guardian", run_id)


def runner_id(node: str) -> str:
    return names.agent_id("runner", node)


def orchestrator_id(node: str) -> str:
    return names.agent_id("orchestrator", node)


# gitops (and with it subprocess) is imported only when a branch or a worktree is named: the hot
# commands an agent calls read the ids and the environment names and must stay light.
def branch_name(run_id: str, node: str) -> str:
    from attractor import gitops

    return gitops.branch_name(run_id, node)


def worktrees_dir(target_dir: Path) -> Path:
    from attractor import gitops

    return target_dir / gitops.WORKTREES_DIR


def worktree_path(target_dir: Path, node: str) -> Path:
    return worktrees_dir(target_dir) / names.validate_name(node, "node name")


def validation_tree(target_dir: Path, node: str) -> Path:
    return worktrees_dir(target_dir) / f"{VALIDATION_PREFIX}{names.validate_name(node, 'node name')}"


def is_validation_tree(path: Path) -> bool:
    return path.name.startswith(VALIDATION_PREFIX)


def run_sessions_prefix(run_id: str) -> str:
    """The start of every tmux session name of run `run_id`."""
    return f"att-{run_id}-".replace(".", "_").replace(":", "_")


def session_prefix(run_id: str, role: str) -> str:
    """The start of every session name of `role` in run `run_id`."""
    if role not in SESSION_ROLES:
        raise ValueError(f"tmux session role {role!r} is not one of {', '.join(SESSION_ROLES)}")
    return f"{run_sessions_prefix(run_id)}{role}-"


def session_name(run_id: str, role: str, node: str) -> str:
    return session_prefix(run_id, role) + node.replace(".", "_").replace(":", "_")


def guardian_session(run_id: str) -> str:
    return session_name(run_id, "guardian", GUARDIAN_SESSION_NODE)


def layer_env(state: StateDir, tmux_socket: str, agent_id: str) -> dict[str, str]:
    """The environment of a layer process (guardian, runner) started in its own tmux session."""
    return {names.ENV_STATE_DIR: str(state.root), names.ENV_TMUX_SOCKET: tmux_socket,
            names.ENV_AGENT_ID: agent_id}


def agent_env(state: StateDir, *, run_id: str, node: str, tmux_socket: str,
              target_branch: str = "main") -> dict[str, str]:
    """The environment an agent of `node` starts with: who it is, whom it reports to, where the
    state lives; this interpreter's bin directory leads PATH, so `attractor` is the one running."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "/usr/bin:/bin")
    return {
        names.ENV_STATE_DIR: str(state.root),
        names.ENV_AGENT_ID: orchestrator_id(node),
        names.ENV_RUNNER_ID: runner_id(node),
        names.ENV_NODE: node,
        names.ENV_RUN_ID: run_id,
        names.ENV_TMUX_SOCKET: tmux_socket,
        names.ENV_TARGET_BRANCH: target_branch,
        "PATH": path if path.startswith(bin_dir + ":") else f"{bin_dir}:{path}",
    }


@dataclass(frozen=True)
class RunLayout:
    """The names of one run's parts on one target, for the layers that hold both."""

    run_id: str
    target_dir: Path

    @property
    def guardian_id(self) -> str:
        return guardian_id(self.run_id)

    @property
    def guardian_session(self) -> str:
        return guardian_session(self.run_id)

    def branch(self, node: str) -> str:
        return branch_name(self.run_id, node)

    def worktree(self, node: str) -> Path:
        return worktree_path(self.target_dir, node)

    def validation_tree(self, node: str) -> Path:
        return validation_tree(self.target_dir, node)

    def session_prefix(self, role: str) -> str:
        return session_prefix(self.run_id, role)
