"""The short path of the hot commands: agents call them many times an hour, each a new process,
so these command lines are handled here, before argparse or any store is imported:

    attractor identity update-liveness ROLE NAME [--state-dir DIR]
    attractor hook update-phase ROLE NAME PHASE [--note TEXT] [--commit SHA] [--state-dir DIR]
    attractor signal send KIND --to AGENT [--from SENDER] [--payload JSON] [--state-dir DIR]

(the options after the positionals, `--opt VALUE` or `--opt=VALUE`, each at most once; the
state directory from `--state-dir` or $ATTRACTOR_STATE_DIR). `run` returns None for every other
command line, and the full path (`_parser`, the stores) runs it.

The short path writes what the stores write, byte for byte (the JSON text, temp file, lock and
record fields of `store/formats.py`), under the same lock and with the same atomic replace and
fsyncs, and prints the same line. It takes on only the plain case: valid names, a record that
is there and reads cleanly with values it can vouch for, private directories that exist, a
lock that is free, a phase move it knows is allowed. Anything else and it gives up before it
has changed anything (a temp file it made is removed, a lock it took let go), and the full path
runs the same command line from the start and reports the problem as always (one line on
stderr, exit 2 for bad input). Imports: `os`, `sys`, `attractor.names`, `attractor.errors` and
`store/formats.py`; never logging, dataclasses, enum, typing, pathlib, re or argparse.
"""

from __future__ import annotations

import os

from attractor import names
from attractor.errors import EXIT_OK, UsageError, error_handler
from attractor.store import formats

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

DEFAULT_SENDER = "user-cli"  # the sender of `signal send` without --from or $ATTRACTOR_AGENT_ID


class _FullPath(BaseException):
    """Leave this command line to the full path; raised before anything has changed. A
    BaseException, so that `error_handler` lets it through."""


def record_line(verb: str, agent_id: str, status: str, epoch: int, pid: int | None) -> str:
    """What an identity command prints about the record it wrote."""
    return f"{verb} {agent_id}: {status}, epoch {epoch}" + (f", pid {pid}" if pid else "")


def hook_line(verb: str, agent_id: str, phase: str, last_commit: str | None) -> str:
    """What a hook command prints about the hook it wrote."""
    return f"{verb} {agent_id}: {phase}" + (f", commit {last_commit}" if last_commit else "")


# --------------------------------------------------------------------------- the command line


def _split(words: Sequence[str], count: int, options: frozenset[str]) -> tuple[list[str], dict[str, str]]:
    """`count` positionals, then each of `options` at most once with a value."""
    positionals = list(words[:count])
    if len(positionals) != count or any(word.startswith("-") for word in positionals):
        raise _FullPath
    given: dict[str, str] = {}
    rest = list(words[count:])
    while rest:
        word = rest.pop(0)
        option, equals, value = word.partition("=")
        if not equals:
            if not rest or rest[0].startswith("-"):
                raise _FullPath
            value = rest.pop(0)
        if option not in options or option in given:
            raise _FullPath
        given[option] = value
    return positionals, given


def _state_root(given: dict[str, str]) -> str:
    """The state directory: --state-dir, else $ATTRACTOR_STATE_DIR (no default here: finding
    the enclosing repository is the full path's)."""
    chosen = given.get("--state-dir") or os.environ.get(names.ENV_STATE_DIR)
    if not chosen or chosen.startswith("~"):
        raise _FullPath
    return chosen if os.path.isabs(chosen) else os.path.join(os.getcwd(), chosen)


def _private_dirs(*paths: str) -> None:
    """Each directory exists and may hold state (creating or refusing one: the full path)."""
    for path in paths:
        if formats.dir_problem(os.stat(path)) is not None:
            raise _FullPath


def _checked(check: Callable[..., Any], *values: object) -> Any:
    try:
        return check(*values)
    except UsageError:
        raise _FullPath from None


# --------------------------------------------------------------------------- records


def _read(path: str) -> dict[str, Any]:
    data = formats.loads(formats.read_regular_bytes(path))
    if not isinstance(data, dict) or type(data.get("schema")) is not int or data["schema"] != formats.SCHEMA:
        raise _FullPath
    return data


def _fits(value: object, first: str, rest: str, limit: int) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= limit and value[0] in first
            and not value.strip(rest))


def _name_ok(value: object) -> bool:
    try:
        names.validate_name(value)  # type: ignore[arg-type]
    except UsageError:
        return False
    return True


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# identity fields that are null or text of an alphabet: (first characters, the rest, most characters)
_TOKENS = {
    "tmux_socket": (_ALNUM, _ALNUM + "_.-", 255),
    "tmux_session": (_ALNUM, _ALNUM + "_.-", 255),
    "session_id": (_ALNUM, _ALNUM + "_.:-", 128),
    "pane_id": ("%", "0123456789", 10),
}


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def _owner_ok(data: dict[str, Any], fields: tuple[str, ...], role: str, name: str) -> bool:
    """The fields every record of one agent has, as its store's `from_json` takes them."""
    return (sorted(data) == sorted(fields) and data["role"] == role and data["name"] == name
            and data["agent_id"] == f"{role}-{name}" and formats.is_iso_stamp(data["created_at"])
            and isinstance(data["history"], list) and all(isinstance(entry, dict) for entry in data["history"]))


def _identity_ok(data: dict[str, Any], role: str, name: str) -> bool:
    """An identity record `identities.Identity.from_json` takes as it is (a narrower test:
    anything it cannot vouch for goes to the full path)."""
    if not _owner_ok(data, formats.IDENTITY_FIELDS, role, name):
        return False
    pid, start, worktree, pane = data["pid"], data["pid_start"], data["worktree"], data["pane_id"]
    return (_count(data["epoch"]) and _count(data["crash_count"])
            and formats.is_iso_stamp(data["last_heartbeat"])
            and (pid is None or (_count(pid) and pid > 0)) and (start is None or _count(start))
            and all(data[key] is None or _fits(data[key], first, rest, limit)
                    for key, (first, rest, limit) in _TOKENS.items())
            and (pane is None or (len(pane) > 1 and "%" not in pane[1:]))
            and (worktree is None or (isinstance(worktree, str) and worktree != ""
                                      and all(char >= " " for char in worktree))))


def _text_ok(value: object) -> bool:
    return isinstance(value, str) and len(value) <= formats.TEXT_LIMIT and "\x00" not in value


def _hook_ok(data: dict[str, Any], role: str, name: str) -> bool:
    """A hook record `hooks.Hook.from_json` takes as it is (narrower, like `_identity_ok`)."""
    if not _owner_ok(data, formats.HOOK_FIELDS, role, name):
        return False
    node, commit = data["node"], data["last_commit"]
    return (data["phase"] in formats.PHASE_MOVES and formats.is_iso_stamp(data["updated_at"])
            and _count(data["attempts"]) and _text_ok(data["resumption_instructions"])
            and isinstance(data["run_id"], str) and (node is None or _name_ok(node))
            and (commit is None or formats.is_commit(commit)))


class _Update:
    """Read-modify-write of one record as `records.Kind.modify` does it: the temp file first,
    then the lock (only if free right now: a queue is the full path's), the read, the commit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.replacement = formats.Replacement(path)
        self.lock = -1
        try:
            self.lock = formats.open_lock(path + ".lock")
            if not formats.QUEUED or formats.try_fast(self.lock, queue=False) is not True:
                raise _FullPath
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.lock != -1:
            os.close(self.lock)  # lets go of the lock, before the replaced version is freed
            self.lock = -1
        self.replacement.close()


def _modify(path: str, change: Callable[[dict[str, Any]], bytes | None],
            check: Callable[[dict[str, Any]], bool], fsync: bool) -> dict[str, Any]:
    """Change the record at `path` under its lock: `change` edits it in place and returns its new
    text, or None to leave the file as it is. Anything in the way before the commit: _FullPath."""
    try:
        update = _Update(path)
    except Exception:
        raise _FullPath from None
    try:
        try:
            data = _read(path)
            if not check(data):
                raise _FullPath
            text = change(data)
        except Exception:  # a record or file it cannot vouch for: the full path reports it
            raise _FullPath from None
        if text is not None:
            try:
                update.replacement.commit(text, fsync=fsync)
            except OSError:
                if not update.replacement.committed:
                    raise _FullPath from None
                raise
        return data
    finally:
        update.close()


def _record_path(root: str, kind: str, agent_id: str) -> str:
    path = os.path.join(root, kind, agent_id + ".json")
    try:
        if not os.path.exists(path):
            raise _FullPath
        _private_dirs(root, os.path.join(root, kind))
    except OSError:
        raise _FullPath from None
    return path


# --------------------------------------------------------------------------- the commands


def _update_liveness(words: Sequence[str]) -> int:
    (role, name), given = _split(words, 2, frozenset({"--state-dir"}))
    agent = _checked(names.agent_id, role, name)
    path = _record_path(_state_root(given), "identities", agent)

    def heartbeat(data: dict[str, Any]) -> bytes:
        if data["status"] != "active":  # a move to active: the full path's transition
            raise _FullPath
        data["last_heartbeat"] = formats.iso_stamp()
        return formats.dumps(data)

    data = _modify(path, heartbeat, lambda data: _identity_ok(data, role, name), fsync=False)
    print(record_line("heartbeat", agent, data["status"], data["epoch"], data["pid"]))
    return EXIT_OK


def _update_phase(words: Sequence[str]) -> int:
    (role, name, phase), given = _split(words, 3, frozenset({"--state-dir", "--note", "--commit"}))
    agent = _checked(names.agent_id, role, name)
    note = given.get("--note", "")
    sha = given["--commit"].lower() if "--commit" in given else None
    if phase not in formats.PHASE_MOVES or not _text_ok(note) or (sha is not None and not formats.is_commit(sha)):
        raise _FullPath
    path = _record_path(_state_root(given), "hooks", agent)

    def move(data: dict[str, Any]) -> bytes | None:
        now = formats.iso_stamp()
        current = data["phase"]
        if current == phase:
            if sha is None or sha == data["last_commit"]:
                return None
        elif phase in formats.PHASE_MOVES[current]:
            entry = {"at": now, "from": current, "to": phase, "note": note, "commit": sha}
            data["history"] = [*data["history"], entry][-formats.HISTORY_LIMIT:]
            data["phase"] = phase
            data["attempts"] += 1 if phase == "executing" else 0
        else:
            raise _FullPath  # an illegal move: the full path's transition says which are allowed
        data["last_commit"] = sha or data["last_commit"]
        data["updated_at"] = now
        return formats.dumps(data)

    data = _modify(path, move, lambda data: _hook_ok(data, role, name), fsync=True)
    print(hook_line("hook", agent, data["phase"], data["last_commit"]))
    return EXIT_OK


def _current_epoch(root: str, agent_id: str) -> int | None:
    """`identities.current_epoch` where the record reads cleanly; anything else: _FullPath."""
    try:
        data = _read(os.path.join(root, "identities", agent_id + ".json"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, formats.Unreadable):
        raise _FullPath from None
    epoch = data.get("epoch")
    if type(epoch) is not int:
        raise _FullPath
    return epoch


def _send(words: Sequence[str]) -> int:
    (kind,), given = _split(words, 1, frozenset({"--to", "--from", "--payload", "--state-dir"}))
    if kind not in formats.PAYLOAD_FIELDS or "--to" not in given:
        raise _FullPath
    to = _checked(names.validate_agent_id, given["--to"])
    sender = _checked(names.validate_agent_id, given.get("--from") or os.environ.get(names.ENV_AGENT_ID)
                      or DEFAULT_SENDER)
    try:
        data = formats.loads(given["--payload"]) if "--payload" in given else {}
    except (ValueError, RecursionError):
        raise _FullPath from None
    payload = formats.plain_payload(kind, data) if isinstance(data, dict) else None
    if payload is None:
        raise _FullPath
    root = _state_root(given)
    epoch = _current_epoch(root, to)
    signal_id = formats.new_signal_id()
    record = dict(zip(formats.SIGNAL_FIELDS, (
        formats.SCHEMA, signal_id, kind, sender, to, epoch, payload, formats.iso_stamp(),
        None, None, None, ""), strict=True))
    inbox = os.path.join(root, "signals", to)
    boxes = [os.path.join(inbox, box) for box in ("tmp", "new", "cur", "done")]
    try:
        _private_dirs(root, os.path.join(root, "signals"), inbox, *boxes)
    except OSError:
        raise _FullPath from None
    tmp = os.path.join(inbox, "tmp", signal_id + ".json")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, formats.FILE_MODE)
        try:
            formats.write_all(fd, formats.dumps(record), True)
            os.rename(tmp, os.path.join(inbox, "new", signal_id + ".json"))
        except BaseException:
            try:  # noqa: SIM105
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        raise _FullPath from None
    formats.fsync_dir(os.path.join(inbox, "new"))
    print(signal_id)
    return EXIT_OK


_COMMANDS: dict[tuple[str, str], Callable[[Sequence[str]], int]] = {
    ("identity", "update-liveness"): _update_liveness,
    ("hook", "update-phase"): _update_phase,
    ("signal", "send"): _send,
}


def run(words: Sequence[str]) -> int | None:
    """The exit code of a hot command line handled here, or None: the full path runs it."""
    command = _COMMANDS.get((words[0], words[1])) if len(words) >= 2 else None
    if command is None:
        return None
    try:
        return error_handler(lambda: command(words[2:]))
    except _FullPath:
        return None
