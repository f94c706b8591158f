"""Where attractor keeps a user's own files (not a project's state): the XDG base directories.

    config_dir()   $XDG_CONFIG_HOME/attractor, else ~/.config/attractor   projects, the runtime
                                                                          directory's fallback
    state_home()   $XDG_STATE_HOME/attractor, else ~/.local/state/attractor   the daemon's logs

Standard library only: a client of the daemon imports it on every command.
"""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser().absolute() / "attractor"


def state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser().absolute() / "attractor"
