"""The merge queue's configuration: the config file, the options that override it, and the
check made before anything is touched.

Config file (optional) `<repo>/.attractor/merge-queue.toml`; CLI options override it:

    target = "main"                 # branch the queue lands on
    delete_merged_branch = false    # delete a branch once merged (unless checked out)
    push_remote = "origin"          # push the target there after each merge
    max_retries = 3                 # re-tests after a moved target / dead processor
    sender = "merge-queue-main"     # agent id the MERGE_* signals come from
    [[gates]]
    command = "pytest -q"
    timeout = 900                   # seconds; the whole process group is killed past it
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attractor import gitops
from attractor.engines.gates import DEFAULT_GATE_TIMEOUT, Gate, check_gate
from attractor.errors import BadInputError, NotFoundError
from attractor.names import validate_agent_id

CONFIG_FILE = Path(".attractor") / "merge-queue.toml"
DEFAULT_MAX_RETRIES = 3


@dataclass(frozen=True)
class QueueConfig:
    target: str = "main"
    gates: tuple[Gate, ...] = ()
    delete_merged_branch: bool = False
    push_remote: str | None = None
    sender: str = ""  # default: merge-queue-<target>
    max_retries: int = DEFAULT_MAX_RETRIES
    # when set: the target must be exactly this commit to merge onto (the guardian passes the tip
    # the queue last left); any other tip is TARGET_UNTRUSTED and the entry stays queued
    expected_base: str | None = None

    def __post_init__(self) -> None:
        gitops.validate_branch_name(self.target)
        if not self.sender:
            cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in self.target.lower())
            object.__setattr__(self, "sender", f"merge-queue-{cleaned}")
        validate_agent_id(self.sender)
        if self.max_retries < 0:
            raise BadInputError("max_retries", f"must be >= 0, got {self.max_retries}")


_CONFIG_TYPES: dict[str, type] = {
    "target": str, "push_remote": str, "sender": str, "delete_merged_branch": bool,
    "max_retries": int, "gates": list,
}


def _read_config_file(path: Path) -> dict[str, Any]:
    what = f"merge queue config {path}"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(what, f"not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(_CONFIG_TYPES))
    if unknown:
        allowed = ", ".join(sorted(_CONFIG_TYPES))
        raise BadInputError(what, f"unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    for key, kind in _CONFIG_TYPES.items():
        value = data.get(key)
        if value is not None and (type(value) is not kind):
            raise BadInputError(what, f"{key} must be a {kind.__name__}, got {value!r}")
    gates = []
    for item in data.get("gates", []):
        if (not isinstance(item, dict) or not isinstance(item.get("command"), str)
                or set(item) - {"command", "timeout"}):
            raise BadInputError(what, 'each [[gates]] has command = "…" and optional timeout = N')
        timeout = item.get("timeout", DEFAULT_GATE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise BadInputError(what, f"gate {item['command']!r}: timeout must be a number")
        gates.append(Gate(item["command"], float(timeout)))
    data["gates"] = tuple(gates)
    return data


def load_config(
    repo: gitops.RepoLike,
    *,
    target: str | None = None,
    gates: Sequence[str] | None = None,
    gate_timeout: float | None = None,
    extra_gates: Sequence[Gate] = (),
    delete_merged_branch: bool | None = None,
    push_remote: str | None = None,
    sender: str | None = None,
    config_file: Path | None = None,
) -> QueueConfig:
    """`<repo>/.attractor/merge-queue.toml` (if present) overridden by the given values. `gates`
    replaces the file's gates; `gate_timeout` applies to `gates`, or to the file's gates when
    no `gates` are given; `extra_gates` run after them."""
    path = config_file or gitops.as_repo(repo).root / CONFIG_FILE
    data = _read_config_file(path)
    if gate_timeout is not None and not gate_timeout > 0:
        raise BadInputError("--gate-timeout", f"must be a positive number, got {gate_timeout:g}")
    if gates is not None:
        data["gates"] = tuple(Gate(cmd, gate_timeout or DEFAULT_GATE_TIMEOUT) for cmd in gates)
    elif gate_timeout is not None:
        data["gates"] = tuple(Gate(g.command, gate_timeout) for g in data.get("gates", ()))
    data["gates"] = (*data.get("gates", ()), *extra_gates)
    overrides = {"target": target, "delete_merged_branch": delete_merged_branch,
                 "push_remote": push_remote, "sender": sender}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return QueueConfig(**data)


def check_config(repo: gitops.GitRepo, config: QueueConfig) -> None:
    """Bad gates or a missing target are bad input (exit 2), found before anything is touched."""
    for gate in config.gates:
        check_gate(gate)
    if not gitops.branch_exists(repo, config.target):
        hint = f"no such branch in {repo.root}; pass --target BRANCH"
        raise NotFoundError("target branch", config.target, hint)
