"""The one exception tree of attractor and the single place that maps it to exit codes.

Exit codes (DESIGN.md): 0 success; 1 expected operational failure (lock timeout, identity taken,
conflict, red gate); 2 bad usage or bad input; 3 unexpected bug (traceback written to the logs
directory, one line on stderr); 130 interrupted with Ctrl-C.

Every exception carries its data as fields and builds its one-line message from them.
"""

from __future__ import annotations

import errno
import os
import sys
import time

# Imported by the hot commands (cli/hot.py): only what a bare interpreter has loaded already.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


class AttractorError(Exception):
    """Root of every error attractor raises on purpose. Exit code 1 unless a subclass says 2."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(AttractorError):
    """Bad usage or bad input: the caller can fix it. Exit code 2."""

    exit_code = EXIT_USAGE


class InvalidNameError(UsageError):
    def __init__(self, kind: str, value: str, rule: str) -> None:
        self.kind = kind
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {kind} {value!r}: {rule}")


class UnknownValueError(UsageError):
    """A value outside a closed set: an unknown role, phase, signal kind, shape …"""

    def __init__(self, kind: str, value: str, allowed: Iterable[str]) -> None:
        self.kind = kind
        self.value = value
        self.allowed = tuple(allowed)
        super().__init__(f"unknown {kind} {value!r}; expected one of: {', '.join(self.allowed)}")


class TransitionError(UsageError):
    def __init__(self, what: str, current: str, target: str, allowed: Iterable[str]) -> None:
        self.what = what
        self.current = current
        self.target = target
        self.allowed = tuple(allowed)
        allowed_text = ", ".join(self.allowed) if self.allowed else "none (final state)"
        super().__init__(
            f"{what}: illegal transition {current} -> {target}; allowed from {current}: "
            f"{allowed_text}"
        )


class NotFoundError(UsageError):
    def __init__(self, kind: str, name: str, hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.hint = hint
        suffix = f"; {hint}" if hint else ""
        super().__init__(f"{kind} {name!r} not found{suffix}")


class AlreadyExistsError(AttractorError):
    def __init__(self, kind: str, name: str, detail: str = "") -> None:
        self.kind = kind
        self.name = name
        self.detail = detail
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"{kind} {name!r} already exists{suffix}")


class BadInputError(UsageError):
    """Malformed input the user gave: a payload that is not JSON, a bad option value."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"{what}: {problem}")


class CorruptStateError(UsageError):
    """A state file that does not parse or does not match its schema; it was moved aside."""

    def __init__(self, path: Path, problem: str, moved_to: Path | None = None) -> None:
        self.path = path
        self.problem = problem
        self.moved_to = moved_to
        where = f"; moved aside to {moved_to}" if moved_to else ""
        super().__init__(f"corrupt state file {path}: {problem}{where}")


class StateDirError(UsageError):
    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state directory {path}: {problem}")


class LockTimeoutError(AttractorError):
    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        super().__init__(
            f"lock {path} not acquired within {timeout:g}s; another attractor process holds it"
        )


class UnsafeStateFileError(UsageError):
    """A name in the state directory that attractor will not use: a lock file that is a
    symbolic link, a state file that is a directory. Exit code 2: someone has to look."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class NoSpaceError(AttractorError):
    """A write failed because the file system is full (ENOSPC) or the quota is spent (EDQUOT)."""

    def __init__(self, path: Path | str | None, quota: bool = False) -> None:
        self.path = path
        self.quota = quota
        what = "disk quota exceeded" if quota else "no space left on device"
        super().__init__(f"{what} writing {path}" if path else what)


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def no_space(exc: BaseException, path: Path | str | None) -> NoSpaceError | None:
    """A NoSpaceError naming `path` if `exc` is a full disk or spent quota, else None."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return NoSpaceError(path or exc.filename, quota=exc.errno == errno.EDQUOT)
    return None


class MissingPackageError(UsageError):
    """A Python package attractor needs is not installed for this interpreter."""

    def __init__(self, module: str, package: str) -> None:
        self.module = module
        self.package = package
        python = sys.executable or "python3"
        super().__init__(
            f"the Python package {package!r} (module {module!r}) is not installed for {python}; "
            f"install attractor's dependencies with: {python} -m pip install {package} "
            "(or, from a checkout: pip install -e .)"
        )


# modules of the dependencies in pyproject.toml, and the package that provides each
DEPENDENCY_PACKAGES = {
    "yaml": "PyYAML",
    "watchdog": "watchdog", "pydot": "pydot",
}


class MissingBinaryError(UsageError):
    def __init__(self, binary: str, hint: str = "") -> None:
        self.binary = binary
        self.hint = hint
        suffix = f"; {hint}" if hint else f"; install {binary} or put it on PATH"
        super().__init__(f"required program {binary!r} not found{suffix}")


class ExternalCommandError(AttractorError):
    """A tmux or git operation failed; tagged with the operation, like `tmux new-session: …`."""

    def __init__(self, operation: str, stderr: str) -> None:
        self.operation = operation
        self.stderr = stderr.strip()
        first = self.stderr.splitlines()[0] if self.stderr else "failed"
        super().__init__(f"{operation}: {first}")


class TmuxError(ExternalCommandError):
    pass


class GitError(ExternalCommandError):
    pass


class TimeoutExpiredError(AttractorError):
    def __init__(self, what: str, seconds: float) -> None:
        self.what = what
        self.seconds = seconds
        super().__init__(f"timed out after {seconds:g}s waiting for {what}")


def _private_dirs(path: Path) -> None:
    """Create `path` and each missing parent with mode 0700 (mkdir's `parents` would give the
    parents the umask's mode)."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def _log_traceback(exc: BaseException, log_dir: Path | None) -> Path | None:
    if log_dir is None:
        return None
    import traceback

    try:
        _private_dirs(log_dir)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = log_dir / f"crash-{stamp}-{os.getpid()}.log"
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"argv: {sys.argv!r}\n{text}")
        return path
    except OSError:
        return None


def error_handler(
    func: Callable[[], int], log_dir: Callable[[], Path | None] | None = None
) -> int:
    """Run `func` and map whatever it raises to an exit code and one line on stderr.

    `log_dir` is called only when an unexpected exception happens, to find where the traceback
    goes (the state directory's `logs/`, when one is known).
    """
    try:
        return func()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except AttractorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return EXIT_FAILURE
    except RecursionError:
        print("error: input nested too deeply to process", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if exc.name not in DEPENDENCY_PACKAGES:
            return _bug(exc, log_dir)
        missing = MissingPackageError(exc.name, DEPENDENCY_PACKAGES[exc.name])
        print(f"error: {missing}", file=sys.stderr)
        return missing.exit_code
    except OSError as exc:
        full = no_space(exc, None)
        if full is None:
            return _bug(exc, log_dir)
        print(f"error: {full}", file=sys.stderr)
        return full.exit_code
    except Exception as exc:
        return _bug(exc, log_dir)


def _bug(exc: BaseException, log_dir: Callable[[], Path | None] | None) -> int:
    """The one place that turns a bug into exit code 3."""
    where = _log_traceback(exc, log_dir() if log_dir else None)
    detail = f"; traceback in {where}" if where else ""
    print(f"error: unexpected {type(exc).__name__}: {exc}{detail}", file=sys.stderr)
    return EXIT_BUG


class IdentityTakenError(AttractorError):
    def __init__(self, agent_id: str, pid: int | None, detail: str = "") -> None:
        self.agent_id = agent_id
        self.pid = pid
        self.detail = detail
        holder = f"pid {pid}" if pid else "a live process"
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"identity {agent_id!r} is held by {holder}{suffix}")
