"""Where state lives: `.claude/state/` of the target repository, or `--state-dir`, or
`ATTRACTOR_STATE_DIR`. The layout (DESIGN.md):

    identities/<role>-<name>.json   hooks/<role>-<name>.json   signals/<agent-id>/{tmp,new,cur,done}/
    merge-queue/entries/<id>.json   runs/<run-id>/             logs/

`StateDir` only computes paths and creates directories privately (0700); it reads no records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from attractor import names
from attractor.store.atomic import ensure_private_dir

ENV_STATE_DIR = names.ENV_STATE_DIR


def find_repo_root(start: Path) -> Path | None:
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


PathArg = str | os.PathLike[str] | None


def resolve_state_path(explicit: PathArg = None, target_dir: PathArg = None) -> Path:
    """`explicit` > $ATTRACTOR_STATE_DIR > <target_dir or enclosing repo or cwd>/.claude/state."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env).expanduser().absolute()
    base = Path(target_dir).expanduser().absolute() if target_dir else Path.cwd()
    root = base if target_dir else (find_repo_root(base) or base)
    return root / ".claude" / "state"


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def resolve(cls, explicit: PathArg = None, target_dir: PathArg = None) -> StateDir:
        return cls(resolve_state_path(explicit, target_dir))

    def ensure(self, *parts: str) -> Path:
        """The directory `root/parts…`, created 0700 along with root; refused if unsafe."""
        ensure_private_dir(self.root)
        path = self.root.joinpath(*parts)
        if parts:
            ensure_private_dir(path)
        return path

    @property
    def identities(self) -> Path:
        return self.root / "identities"

    @property
    def hooks(self) -> Path:
        return self.root / "hooks"

    @property
    def signals(self) -> Path:
        return self.root / "signals"

    @property
    def merge_queue(self) -> Path:
        return self.root / "merge-queue"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"
