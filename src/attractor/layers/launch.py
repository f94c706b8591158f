"""Layer 3: the agent of one node, started in a tmux pane in the node's worktree.

This module builds the agent's prompt (the wisdom block of the node's hook, the orchestrator role
definition from `.claude/agents/orchestrator.md`, the node's task and how to report) and starts
the agent through its adapter (`attractor.agents`). The prompt is written to
`runs/<run-id>/prompts/<node>-<attempt>.md` under the state directory, beside the script file of
the scripted agent.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor.agents import Agent, Launch, LaunchContext
from attractor.errors import BadInputError, NotFoundError
from attractor.layers import layout
from attractor.store.atomic import ensure_private_dir, write_bytes_atomic
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

PACKAGE_CHECKOUT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class RoleDefinition:
    name: str
    meta: dict[str, Any]
    body: str
    path: Path


def role_paths(role: str, target_dir: Path | None) -> list[Path]:
    places = []
    if target_dir is not None:
        places.append(target_dir / ".claude" / "agents" / f"{role}.md")
    places.append(PACKAGE_CHECKOUT / ".claude" / "agents" / f"{role}.md")
    return places


def load_role(role: str, target_dir: Path | None = None) -> RoleDefinition:
    """The role definition: markdown with YAML front matter; the target repo's copy wins."""
    import yaml

    for path in role_paths(role, target_dir):
        if not path.is_file():
            continue
        text = path.read_text()
        meta: dict[str, Any] = {}
        body = text
        if text.startswith("---\n"):
            head, sep, rest = text[4:].partition("\n---\n")
            if not sep:
                raise BadInputError(str(path), "front matter opened with --- is never closed")
            try:
                loaded = yaml.safe_load(head) or {}
            except yaml.YAMLError as exc:
                raise BadInputError(str(path), f"front matter is not valid YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise BadInputError(str(path), "front matter must be a mapping")
            meta, body = loaded, rest
        return RoleDefinition(role, meta, body.strip() + "\n", path)
    raise NotFoundError("role definition", role, f"looked in {', '.join(str(p) for p in role_paths(role, target_dir))}")


def attractor_command() -> str:
    """How an agent's shell calls attractor: the same interpreter that runs us."""
    return f"{shlex.quote(sys.executable)} -m attractor"


def report_commands(node: str, agent_id: str, runner_id: str) -> tuple[str, str]:
    cmd = attractor_command()
    # no commit in the report: the runner reads the branch from git (and a command without a
    # shell substitution in it is one a CLI's permission check can match against its allow list)
    done_payload = json.dumps({"node": node, "summary": "<one line>"})
    stuck_payload = json.dumps({"node": node, "reason": "<one sentence>"})
    done = (f"{cmd} signal send ORCHESTRATOR_DONE --to {runner_id} --from {agent_id} "
            f"--payload {shlex.quote(done_payload)}")
    stuck = (f"{cmd} signal send ORCHESTRATOR_STUCK --to {runner_id} --from {agent_id} "
             f"--payload {shlex.quote(stuck_payload)}")
    return done, stuck


def heartbeat_command(node: str) -> str:
    return f"{attractor_command()} identity update-liveness orchestrator {node}"


def build_prompt(*, role: RoleDefinition, node: str, task: str, worktree: Path, branch: str,
                 agent_id: str, runner_id: str, wisdom: str = "", goal: str = "", attempt: int = 1) -> str:
    done, stuck = report_commands(node, agent_id, runner_id)
    parts = []
    if wisdom.strip():
        parts.append(wisdom.strip())
    parts.append(role.body.strip())
    if goal:
        parts.append(f"## Goal of the whole pipeline\n{goal}")
    parts.append(f"## Your task (node `{node}`)\n{task.strip() or '(no prompt given)'}")
    parts.append(f"## Where\nWorktree: {worktree}\nBranch: {branch}\nAttempt: {attempt}")
    parts.append(
        "## Report\n"
        f"When your work is committed, run:\n\n    {done}\n\n"
        f"If you are stuck, run:\n\n    {stuck}\n\n"
        f"Every few minutes while working you may refresh your heartbeat with:\n\n"
        f"    {heartbeat_command(node)}"
    )
    return "\n\n".join(parts) + "\n"


def write_launch_files(state: StateDir, run_id: str, node: str, attempt: int, prompt: str,
                       script: str | None) -> tuple[Path, Path | None]:
    directory = state.runs / run_id / "prompts"
    ensure_private_dir(directory)
    prompt_file = directory / f"{node}-{attempt}.md"
    write_bytes_atomic(prompt_file, prompt.encode(), fsync=False)
    script_file = None
    if script is not None:
        script_file = directory / f"{node}.script"
        write_bytes_atomic(script_file, script.encode(), fsync=False)
    return prompt_file, script_file


def launch_context(state: StateDir, *, node: str, worktree: Path, prompt_file: Path, attempt: int,
                   script_file: Path | None, **more: Any) -> LaunchContext:
    """The adapter's view of one start; `more` carries the optional LaunchContext fields."""
    agent_id, runner_id = layout.orchestrator_id(node), layout.runner_id(node)
    done, stuck = report_commands(node, agent_id, runner_id)
    defaults: dict[str, Any] = {"report_command": done, "stuck_command": stuck,
                                "heartbeat_command": heartbeat_command(node), "attractor": attractor_command()}
    defaults.update(more)
    return LaunchContext(node=node, worktree=worktree, prompt_file=prompt_file, attempt=attempt,
                         agent_id=agent_id, runner_id=runner_id, state_dir=state.root, script_file=script_file,
                         **defaults)


def agent_launch(agent: Agent, ctx: LaunchContext) -> Launch:
    """Let the adapter write its files and say what to run."""
    if agent.name == "scripted" and ctx.script_file is None:
        raise BadInputError(f"node '{ctx.node}'", "the scripted agent needs a `script` attribute on the node")
    return agent.prepare(ctx)


def agent_argv(agent: Agent, ctx: LaunchContext) -> list[str]:
    return agent_launch(agent, ctx).argv


def with_env_removed(argv: list[str], unset: tuple[str, ...]) -> list[str]:
    """`argv` run with the variables `unset` removed from its environment (`env -u`), so an agent
    never inherits the session variables of an enclosing agent CLI (e.g. CLAUDECODE)."""
    if not unset:
        return argv
    words = ["env"]
    for name in unset:
        words += ["-u", name]
    return [*words, *argv]
