"""The user's registry of projects: the target repositories the daemon looks after.

File format: `$XDG_CONFIG_HOME/attractor/projects/<name>.yaml` (else `~/.config/attractor/…`),
one file per project, mode 0600 in 0700 directories, written atomically:

    schema: 1
    name: app                    the project's name (the one name rule; the file's stem)
    path: /home/me/src/app       the git checkout the agents work on (absolute)
    state_dir: null              its state directory (null: <path>/.claude/state)
    agent: claude                the default agent of runs started through the daemon (or null)
    pipeline: pipelines/x.dot    the default pipeline, relative to `path` or absolute (or null)
    policy: {}                   free-form settings for the governance work (kept as given)
    added_at: 2026-12-01T18:00:00Z

These files are the user's to edit, so a reader is strict but never moves one aside: a file
that does not parse or has an unknown key is reported with its path and the fix, and the
listing goes on without it. Staleness: none; a project is there until it is removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attractor import clock
from attractor.errors import AlreadyExistsError, BadInputError, NotFoundError
from attractor.names import validate_name
from attractor.store import atomic, records, userdirs

SCHEMA = 1
_FIELDS = ("schema", "name", "path", "state_dir", "agent", "pipeline", "policy", "added_at")


def config_dir() -> Path:
    return userdirs.config_dir()


def projects_dir() -> Path:
    return config_dir() / "projects"


@dataclass(frozen=True)
class Project:
    name: str
    path: str
    state_dir: str | None = None
    agent: str | None = None
    pipeline: str | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    added_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "name": self.name, "path": self.path, "state_dir": self.state_dir,
                "agent": self.agent, "pipeline": self.pipeline, "policy": dict(self.policy),
                "added_at": self.added_at}

    @classmethod
    def from_json(cls, data: Any) -> Project:
        what = "project"
        checked = records.fields(what, data, _FIELDS, SCHEMA, types={
            "name": (str,), "path": (str,), "state_dir": records.OPTIONAL_TEXT, "agent": records.OPTIONAL_TEXT,
            "pipeline": records.OPTIONAL_TEXT, "policy": (dict,), "added_at": (str,)})
        validate_name(checked["name"], "project name")
        if not Path(checked["path"]).is_absolute():
            raise BadInputError(what, f"path {checked['path']!r} must be absolute")
        checked.pop("schema")
        return cls(**checked)

    @property
    def state_path(self) -> Path:
        if self.state_dir:  # absolute (add_project makes it so); a relative one is under `path`
            return (Path(self.path) / Path(self.state_dir).expanduser()).resolve()
        return Path(self.path) / ".claude" / "state"


def project_file(name: str) -> Path:
    return projects_dir() / f"{validate_name(name, 'project name')}.yaml"


def read_project(path: Path) -> Project:
    """One project file; a bad one is a BadInputError naming the file and what to fix."""
    import yaml

    try:
        data = yaml.safe_load(atomic.read_regular_bytes(path))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "not YAML"
        raise BadInputError(str(path), f"not valid YAML ({first}); fix or remove the file") from None
    try:
        project = Project.from_json(data)
    except BadInputError as exc:
        raise BadInputError(str(path), f"{exc.problem}; fix or remove the file") from None
    if project.name != path.stem:
        raise BadInputError(str(path), f"names project {project.name!r}; rename the file or the project")
    return project


def list_projects(problems: list[BadInputError] | None = None) -> list[Project]:
    """Every readable project, by name; unreadable files are appended to `problems`."""
    directory = projects_dir()
    found: list[Project] = []
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else ():
        try:
            found.append(read_project(path))
        except (BadInputError, OSError) as exc:
            if problems is not None:
                problems.append(exc if isinstance(exc, BadInputError) else BadInputError(str(path), str(exc)))
    return found


def get_project(name: str) -> Project:
    path = project_file(name)
    if not path.exists():
        raise NotFoundError("project", name, "list them with: attractor rpc projects.list")
    return read_project(path)


def add_project(name: str, path: Path, *, state_dir: str | None = None, agent: str | None = None,
                pipeline: str | None = None, policy: dict[str, Any] | None = None,
                replace: bool = False) -> Project:
    """Register `path` (a git checkout) as project `name`."""
    import yaml

    from attractor import gitops

    target = project_file(name)
    root = gitops.open_repo(path).root
    if state_dir is not None:  # absolute and resolved: the daemon and every command agree on it
        state_dir = str((root / Path(state_dir).expanduser()).resolve())
    if target.exists() and not replace:
        raise AlreadyExistsError("project", name, f"{target}; remove it first or pass replace")
    project = Project(name=name, path=str(root), state_dir=state_dir, agent=agent, pipeline=pipeline,
                      policy=dict(policy or {}), added_at=clock.iso())
    atomic.ensure_private_dir(config_dir())
    atomic.ensure_private_dir(projects_dir())
    text = yaml.safe_dump(project.to_json(), sort_keys=False)
    atomic.write_bytes_atomic(target, text.encode())
    return project


def remove_project(name: str) -> Project:
    project = get_project(name)
    project_file(name).unlink()
    return project


def find_project_by_state(state_root: Path) -> Project | None:
    """The registered project whose state directory is `state_root` (both resolved), if any."""
    wanted = Path(state_root).resolve()
    for project in list_projects():
        if project.state_path.resolve() == wanted:
            return project
    return None


def find_project_for(path: Path) -> Project | None:
    """The registered project whose checkout is `path` (resolved), if any."""
    wanted = Path(path).resolve()
    for project in list_projects():
        if Path(project.path).resolve() == wanted:
            return project
    return None
