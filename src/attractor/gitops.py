"""The one door to git: every git operation of attractor goes through this module.

Everything attractor does with git (worktrees, rebase, compare-and-swap of refs, finding the
repository) is a git command, so this module runs the `git` binary itself: stdin closed,
messages in the C locale (callers read git's English), output decoded as UTF-8 with undecodable
bytes kept (surrogateescape). A failure becomes `errors.GitError` tagged with the operation
(`git rebase: CONFLICT …`); a path that is not a git repository is a `NotAGitRepositoryError`
(bad input, exit code 2). No git library is loaded: GitPython, used here before, only ever
wrapped these same commands and cost every runner 13 MB and 60 ms of imports.

Layout owned here: agent worktrees live in `<repo>/.claude/worktrees/<node>` and merge worktrees
in `<repo>/.claude/worktrees/_merge-<entry>`; both directories, like `.claude/state/`, are kept
out of `git status` through `.git/info/exclude`. Branches are `attractor/<run>/<node>`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from attractor.errors import AlreadyExistsError, GitError, MissingBinaryError, UsageError
from attractor.names import validate_name

logger = logging.getLogger(__name__)

WORKTREES_DIR = Path(".claude") / "worktrees"
BRANCH_PREFIX = "attractor"
# Excluded from `git status` of every repository attractor works on.
EXCLUDED_PATTERNS = ("/.claude/state/", "/.claude/worktrees/")
# Our own operations in merge worktrees run without the user's hooks: no prompt, no surprise.
NO_HOOKS = "core.hooksPath=/dev/null"

_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class NotAGitRepositoryError(UsageError):
    def __init__(self, path: Path, problem: str = "not a git repository") -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}; give the path of a git checkout "
                         "(--target-dir, or --repo for merge-queue)")


class InvalidBranchError(UsageError):
    def __init__(self, branch: str, problem: str) -> None:
        self.branch = branch
        self.problem = problem
        super().__init__(f"invalid branch name {branch!r}: {problem}")


class BranchCheckedOutError(GitError):
    def __init__(self, branch: str, worktree: Path) -> None:
        self.branch = branch
        self.worktree = worktree
        super().__init__(
            "git branch",
            f"branch {branch!r} is checked out in {worktree}; remove that worktree first",
        )


@dataclass(frozen=True)
class GitRepo:
    """An opened repository. `path` is the checkout that was opened (maybe a linked worktree);
    `root` is the main checkout, under which `.claude/` lives; `common_dir` is the shared
    `.git` directory."""

    path: Path
    root: Path
    common_dir: Path


@dataclass(frozen=True)
class Worktree:
    path: Path
    head: str | None
    branch: str | None  # short name; None when detached
    bare: bool = False
    prunable: bool = False


RepoLike = GitRepo | str | os.PathLike[str]


# --- opening and running -----------------------------------------------------------------------


def open_repo(path: str | os.PathLike[str]) -> GitRepo:
    """Open the repository containing `path`; a bare repository or a non-repository is refused."""
    where = Path(path).expanduser().absolute()
    if not where.is_dir():
        raise NotAGitRepositoryError(where, "no such directory")
    status, out, err = _git(where, ("rev-parse", "--is-bare-repository", "--is-inside-work-tree",
                                    "--path-format=absolute", "--git-common-dir", "--show-toplevel"))
    lines = out.splitlines()
    if status != 0 and "not a git repository" in err:
        raise NotAGitRepositoryError(where)
    if lines[:1] == ["true"]:
        raise NotAGitRepositoryError(where, "is a bare repository; attractor needs a checkout")
    if lines[1:2] == ["false"]:
        raise NotAGitRepositoryError(where, "is inside a git directory, not a checkout")
    if status != 0 or len(lines) != 4:
        raise GitError("git rev-parse", err.strip() or f"unexpected output {out!r}")
    opened = Path(lines[3])
    common = Path(lines[2]).resolve()
    root = common.parent if common.name == ".git" else opened
    return GitRepo(path=opened, root=root, common_dir=common)


def as_repo(repo: RepoLike) -> GitRepo:
    return repo if isinstance(repo, GitRepo) else open_repo(repo)


def _git(cwd: Path, argv: Sequence[str], env: Mapping[str, str] | None = None,
         timeout: float | None = None) -> tuple[int, str, str]:
    """Run `git argv…` in `cwd`: (status, stdout, stderr), one trailing newline cut from each.

    A `cwd` that does not exist gives status 128 and git's own words for it (never a run in
    some other directory); `timeout` kills git and whatever it started (its process group)."""
    full_env = {**os.environ, "LANGUAGE": "C", "LC_ALL": "C", **(env or {})}
    try:
        proc = subprocess.Popen(["git", *argv], cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                process_group=0 if timeout is not None else None)
    except FileNotFoundError:
        if not cwd.is_dir():
            return 128, "", f"fatal: cannot change to '{cwd}': No such file or directory"
        raise MissingBinaryError("git") from None
    try:
        raw_out, raw_err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise GitError(f"git {argv[0]}", f"did not finish in {timeout:g} s and was killed") from None
    out = raw_out.decode("utf-8", "surrogateescape")
    err = raw_err.decode("utf-8", "surrogateescape")
    return proc.returncode, out[:-1] if out.endswith("\n") else out, err[:-1] if err.endswith("\n") else err


def _run(
    repo: RepoLike,
    op: str,
    *args: str,
    cwd: Path | None = None,
    check: bool = True,
    config: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[int, str, str]:
    """Run `git <op> args…`; returns (status, stdout, stderr).

    `cwd` runs it in another checkout of the same repository (a worktree); `config` adds
    `-c key=value` options; a non-zero status raises `GitError("git <op>: …")` when `check`."""
    where = Path(cwd) if cwd is not None else as_repo(repo).path
    options = [part for item in config for part in ("-c", item)]
    status, out, err = _git(where, (*options, op, *args), env, timeout)
    if check and status != 0:
        raise GitError(f"git {op}", err or out or f"exit status {status}")
    return status, out, err


# --- names ---------------------------------------------------------------------------------------


def validate_branch_name(branch: str) -> str:
    """Reject what `git check-ref-format --branch` rejects (checked here, without a process)."""
    problem = ""
    if not branch:
        problem = "empty"
    elif branch.startswith("-"):
        problem = "starts with '-'"
    elif _BAD_REF_CHARS.search(branch):
        problem = "contains a space, control character or one of ~ ^ : ? * [ \\"
    elif ".." in branch or "@{" in branch or "//" in branch:
        problem = "contains '..', '@{' or '//'"
    elif branch.startswith("/") or branch.endswith("/") or branch.endswith("."):
        problem = "starts or ends with '/', or ends with '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in branch.split("/")):
        problem = "a component starts with '.' or ends with '.lock'"
    if problem:
        raise InvalidBranchError(branch, problem + " (git would reject it)")
    return branch


def branch_name(run: str, node: str) -> str:
    """`attractor/<run>/<node>`, with both parts checked by the one name rule."""
    return f"{BRANCH_PREFIX}/{validate_name(run, 'run id')}/{validate_name(node, 'node name')}"


def worktree_path(repo: RepoLike, node: str) -> Path:
    return as_repo(repo).root / WORKTREES_DIR / validate_name(node, "node name")


def _ref_arg(ref: str) -> str:
    if not ref or ref.startswith("-") or "\n" in ref:
        raise UsageError(f"invalid git revision {ref!r}")
    return ref


# --- reading -------------------------------------------------------------------------------------


RefStamp = tuple[tuple[int, int, int] | None, ...]


def ref_stamp(common_dir: Path, ref: str) -> RefStamp:
    """How the files that can hold `ref` look now (inode, size and change time of the loose ref,
    `packed-refs` and a reftable's table list), read without running git. git replaces these
    files (a lock file renamed into place) whenever a ref moves, so an equal stamp means `ref`
    has not moved since the stamp was taken; take the stamp before reading the ref."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in (common_dir / ref, common_dir / "packed-refs", common_dir / "reftable" / "tables.list"):
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_ctime_ns))
    return tuple(stamps)


def rev_parse(repo: RepoLike, ref: str, *, cwd: Path | None = None) -> str | None:
    """The commit `ref` names, or None when it names none."""
    status, out, _ = _run(
        repo,
        "rev-parse",
        "--verify",
        "--quiet",
        f"{_ref_arg(ref)}^{{commit}}",
        cwd=cwd,
        check=False,
    )
    return out.strip() if status == 0 and out.strip() else None


def tree_of(repo: RepoLike, commit: str) -> str:
    return _run(repo, "rev-parse", "--verify", f"{_ref_arg(commit)}^{{tree}}")[1].strip()


def branch_exists(repo: RepoLike, branch: str) -> bool:
    return rev_parse(repo, f"refs/heads/{validate_branch_name(branch)}") is not None


def current_branch(repo: RepoLike, *, cwd: Path | None = None) -> str | None:
    """The branch checked out in the repository (or in worktree `cwd`); None when detached."""
    status, out, _ = _run(repo, "symbolic-ref", "--quiet", "--short", "HEAD", cwd=cwd, check=False)
    return out.strip() if status == 0 and out.strip() else None


def head_of(worktree: Path) -> str | None:
    return rev_parse(worktree, "HEAD", cwd=worktree)


def merge_base(repo: RepoLike, a: str, b: str) -> str | None:
    status, out, _ = _run(repo, "merge-base", _ref_arg(a), _ref_arg(b), check=False)
    return out.strip() if status == 0 and out.strip() else None


def is_ancestor(repo: RepoLike, ancestor: str, descendant: str) -> bool:
    status, _, err = _run(
        repo, "merge-base", "--is-ancestor", _ref_arg(ancestor), _ref_arg(descendant), check=False
    )
    if status not in (0, 1):
        raise GitError("git merge-base", err)
    return status == 0


def ahead_behind(repo: RepoLike, a: str, b: str) -> tuple[int, int]:
    """(commits only in `a`, commits only in `b`), in one call."""
    out = _run(repo, "rev-list", "--left-right", "--count", f"{_ref_arg(a)}...{_ref_arg(b)}",
               "--")[1]
    left, right = out.split()
    return int(left), int(right)


def commits_between(repo: RepoLike, base: str, head: str) -> list[str]:
    """Commits reachable from `head` and not from `base`, oldest first."""
    out = _run(repo, "rev-list", "--reverse", f"{_ref_arg(base)}..{_ref_arg(head)}", "--")[1]
    return out.split()


def changed_files(repo: RepoLike, base: str, head: str) -> list[str]:
    """Files `head` changes since its merge base with `base` (what the branch itself touched)."""
    out = _run(
        repo, "diff", "--name-only", "--no-renames", f"{_ref_arg(base)}...{_ref_arg(head)}", "--"
    )[1]
    return [line for line in out.splitlines() if line]


def is_clean(worktree: RepoLike, *, untracked: bool = True) -> bool:
    """No staged or unstaged change (and, with `untracked`, no untracked non-ignored file)."""
    path = worktree.path if isinstance(worktree, GitRepo) else Path(worktree)
    flag = "--untracked-files=normal" if untracked else "--untracked-files=no"
    out = _run(path, "status", "--porcelain", flag, cwd=path)[1]
    return not out.strip()


def dirty_checkout_of(repo: RepoLike, branch: str) -> tuple[Path, list[str]] | None:
    """Where `branch` is checked out with uncommitted changes to tracked files (the merge queue
    cannot move it there without touching them): (the worktree, its changed paths), else None."""
    for tree in list_worktrees(repo):
        if tree.branch == branch and not tree.prunable and tree.path.is_dir():
            out = _run(tree.path, "status", "--porcelain", "--untracked-files=no", cwd=tree.path)[1]
            files = [line[3:] for line in out.splitlines() if line.strip()]
            if files:
                return tree.path, files
    return None


def list_worktrees(repo: RepoLike) -> list[Worktree]:
    out = _run(repo, "worktree", "list", "--porcelain")[1]
    result: list[Worktree] = []
    for block in out.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value
        if "worktree" not in fields:
            continue
        branch = fields.get("branch")
        result.append(
            Worktree(
                path=Path(fields["worktree"]),
                head=fields.get("HEAD"),
                branch=branch.removeprefix("refs/heads/") if branch else None,
                bare="bare" in fields,
                prunable="prunable" in fields,
            )
        )
    return result


def worktree_for_branch(repo: RepoLike, branch: str) -> Path | None:
    for tree in list_worktrees(repo):
        if tree.branch == branch and not tree.prunable:
            return tree.path
    return None


# --- changing ------------------------------------------------------------------------------------


def create_branch(repo: RepoLike, name: str, start: str) -> str:
    """Create branch `name` at `start`; returns its commit. An existing branch is an error."""
    validate_branch_name(name)
    if branch_exists(repo, name):
        raise AlreadyExistsError("branch", name)
    _run(repo, "branch", "--no-track", "--", name, _ref_arg(start))
    sha = rev_parse(repo, f"refs/heads/{name}")
    assert sha is not None
    return sha


def delete_branch(repo: RepoLike, name: str, *, expected_sha: str | None = None) -> bool:
    """Delete branch `name` (only if it still points at `expected_sha`, when given). Returns False
    when it did not exist or had moved; refuses a branch checked out in a worktree."""
    validate_branch_name(name)
    holder = worktree_for_branch(repo, name)
    if holder is not None:
        raise BranchCheckedOutError(name, holder)
    current = rev_parse(repo, f"refs/heads/{name}")
    if current is None or (expected_sha is not None and current != expected_sha):
        return False
    status, _, err = _run(repo, "update-ref", "-d", f"refs/heads/{name}", current, check=False)
    if status != 0:
        if rev_parse(repo, f"refs/heads/{name}") != current:
            return False
        raise GitError("git update-ref -d", err)
    return True


def update_ref(repo: RepoLike, ref: str, new: str, old: str, *, message: str = "") -> bool:
    """Compare-and-swap `ref` from `old` to `new`. False when `ref` no longer points at `old`."""
    args = ["-m", message] if message else []
    status, _, err = _run(repo, "update-ref", *args, _ref_arg(ref), new, old, check=False)
    if status == 0:
        return True
    if rev_parse(repo, ref) != old:
        return False
    raise GitError("git update-ref", err)


def exclude_path(repo: RepoLike, pattern: str) -> bool:
    """Add `pattern` to `.git/info/exclude` unless already there; True if it was added."""
    if "\n" in pattern or not pattern.strip():
        raise UsageError(f"invalid exclude pattern {pattern!r}")
    info = as_repo(repo).common_dir / "info"
    info.mkdir(parents=True, exist_ok=True)
    exclude = info / "exclude"
    try:
        text = exclude.read_text()
    except FileNotFoundError:
        text = ""
    if pattern in text.splitlines():
        return False
    prefix = "" if not text or text.endswith("\n") else "\n"
    fd = os.open(exclude, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{prefix}{pattern}\n".encode())
    finally:
        os.close(fd)
    return True


def exclude_attractor_dirs(repo: RepoLike) -> None:
    for pattern in EXCLUDED_PATTERNS:
        exclude_path(repo, pattern)


WORKTREE_LOCK = "attractor-worktrees.lock"
WORKTREE_RETRIES = 3
WORKTREE_LOCK_TIMEOUT = 60.0


@contextlib.contextmanager
def worktree_changes(repo: RepoLike, timeout: float = WORKTREE_LOCK_TIMEOUT) -> Iterator[None]:
    """Serialise changes to the repository's worktree list across processes: a `worktree prune`
    or `remove` never runs while another process is half-way through `worktree add`, which git
    would see as a broken entry.

    The lock is git's business, so it lives in the git door: an flock on
    `.git/attractor-worktrees.lock` (never removed; the kernel lets go when its holder dies).
    Holders run one git command or two, so waiters retry every few milliseconds rather than
    queue; one that waits `timeout` seconds raises GitError naming the lock file."""
    lock_path = as_repo(repo).root / ".git" / WORKTREE_LOCK
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        pause = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise GitError("git worktree", f"{lock_path} held by another process for {timeout:g} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        yield
    finally:
        os.close(fd)


def _transient(exc: GitError) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("commondir", "index.lock", "unable to create", "cannot lock ref",
                                         "failed to read", "is locked", "already exists"))


def ensure_worktree(repo: RepoLike, path: Path, branch: str, base: str = "main") -> Path:
    """A worktree with `branch` checked out, at `path` (branch created from `base` if missing).

    Idempotent: an existing worktree of `branch` is reused, wherever it is. A transient git
    failure (a lock or half-made entry of another process) is retried before it is raised."""
    for attempt in range(1, WORKTREE_RETRIES + 1):
        try:
            with worktree_changes(repo):
                return _ensure_worktree(repo, path, branch, base)
        except GitError as exc:
            if attempt == WORKTREE_RETRIES or not _transient(exc):
                raise
            logger.warning("git worktree for %s failed (%s); retrying", branch, exc)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _ensure_worktree(repo: RepoLike, path: Path, branch: str, base: str) -> Path:
    r = as_repo(repo)
    validate_branch_name(branch)
    existing = worktree_for_branch(r, branch)
    if existing is not None:
        return existing
    path = Path(path).absolute()
    if path.exists() and any(path.iterdir()):
        raise GitError(
            "git worktree add", f"{path} already exists and is not a worktree of {branch}"
        )
    exclude_attractor_dirs(r)
    _run(r, "worktree", "prune")
    path.parent.mkdir(parents=True, exist_ok=True)
    if branch_exists(r, branch):
        _run(r, "worktree", "add", "--", str(path), branch)
    else:
        if rev_parse(r, base) is None:
            raise GitError("git worktree add", f"base {base!r} names no commit")
        _run(r, "worktree", "add", "--no-track", "-b", branch, "--", str(path), _ref_arg(base))
    return path


def worktree_problem(repo: RepoLike, path: Path, branch: str) -> str | None:
    """Why `path` is not a worktree of `repo` with `branch` checked out, or None when it is.
    Checked against git itself: the directory's own git dir must be one of the repository's
    worktree entries (a plain directory inside the main checkout resolves to the main `.git`,
    and a commit there would land on the checked-out branch)."""
    r = as_repo(repo)
    path = Path(path).absolute()
    if not path.is_dir():
        return f"{path} does not exist"
    status, out, err = _run(r, "rev-parse", "--absolute-git-dir", "--git-common-dir", cwd=path, check=False)
    if status != 0:
        return f"{path} is not inside a git repository ({err.strip()[:200]})"
    lines = out.strip().splitlines()
    git_dir = Path(lines[0]).resolve()
    common = (path / lines[1]).resolve() if len(lines) > 1 else git_dir
    main_git = (r.root / ".git").resolve()
    if common != main_git:
        return f"{path} belongs to another repository ({common})"
    if git_dir == main_git or git_dir.parent != main_git / "worktrees":
        return f"{path} is not a registered worktree (its git dir is {git_dir})"
    current = current_branch(r, cwd=path)
    if current != branch:
        return f"{path} has {current or 'a detached HEAD'} checked out, not {branch}"
    return None


def add_detached_worktree(repo: RepoLike, path: Path, commit: str) -> Path:
    """A throw-away worktree at `path` with `commit` checked out detached, hooks off."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with worktree_changes(repo):
        _run(repo, "worktree", "add", "--detach", "--", str(path), _ref_arg(commit), config=(NO_HOOKS,))
    return path


def remove_worktree(repo: RepoLike, path: Path, force: bool = True) -> None:
    """Remove worktree `path` (with its uncommitted changes when `force`) and prune; a path that
    is already gone, or only half registered, is cleaned up all the same."""
    r = as_repo(repo)
    path = Path(path).absolute()
    with worktree_changes(r):
        if path.exists():
            args = ["--force", "--force"] if force else []
            status, _, err = _run(r, "worktree", "remove", *args, "--", str(path), check=False)
            if status == 0:
                return
            if not force:
                raise GitError("git worktree remove", err)
            shutil.rmtree(path, ignore_errors=True)
        _run(r, "worktree", "prune")


@dataclass(frozen=True)
class RebaseResult:
    ok: bool
    head: str | None
    conflicts: tuple[str, ...] = ()
    message: str = ""


def rebase(worktree: Path, onto: str, *, exec_cmd: str | None = None) -> RebaseResult:
    """Rebase the detached HEAD of `worktree` onto `onto`. On a conflict the rebase is aborted
    and the conflicting files are reported."""
    args = ["--no-update-refs", "--no-autosquash", "--no-autostash", "--no-verify"]
    if exec_cmd:
        args += ["--exec", exec_cmd]
    status, out, err = _run(
        worktree, "rebase", *args, _ref_arg(onto), cwd=worktree, check=False, config=(NO_HOOKS,)
    )
    if status == 0:
        return RebaseResult(True, head_of(worktree))
    unmerged = _run(worktree, "diff", "--name-only", "--diff-filter=U", cwd=worktree, check=False)[
        1
    ]
    conflicts = tuple(line for line in unmerged.splitlines() if line)
    _run(worktree, "rebase", "--abort", cwd=worktree, check=False, config=(NO_HOOKS,))
    message = (err or out).strip()
    if not conflicts and "CONFLICT" not in message:
        raise GitError("git rebase", message or f"exit status {status}")
    return RebaseResult(False, None, conflicts, message)


@dataclass(frozen=True)
class PickResult:
    ok: bool
    commit: str | None
    conflicts: tuple[str, ...] = ()


def pick_onto(repo: RepoLike, commit: str, onto: str) -> PickResult:
    """Replay the one commit `commit` adds over its merge base with `onto` on top of `onto`,
    in memory (`merge-tree --write-tree`, no worktree): the rebase of a one-commit branch, with
    the same author, date and message. A change already in `onto` gives `onto` itself."""
    status, out, err = _run(repo, "merge-tree", "--write-tree", "--name-only", "--no-messages",
                            _ref_arg(onto), _ref_arg(commit), check=False)
    lines = out.splitlines()
    if status == 1:
        return PickResult(False, None, tuple(dict.fromkeys(line for line in lines[1:] if line)))
    if status != 0 or not lines:
        raise GitError("git merge-tree", err or out or f"exit status {status}")
    # One call for both: the tree of `onto` and the author and message of `commit`.
    meta = _run(repo, "log", "--no-walk=unsorted", "--date=raw",
                "--format=%T%x00%an%x00%ae%x00%ad%x00%B%x01", _ref_arg(onto), _ref_arg(commit),
                "--")[1]
    onto_tree = meta.split("\0", 1)[0].strip()
    if lines[0] == onto_tree:
        return PickResult(True, onto)  # its change is already there
    _, name, email, date, message = meta.split("\x01")[1].strip("\n").split("\0", 4)
    env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": date}
    sha = _run(repo, "commit-tree", lines[0], "-p", onto, "-m", message.rstrip("\n"), env=env)[1]
    return PickResult(True, sha.strip())


def commit_tree(repo: RepoLike, tree: str, parents: Sequence[str], message: str) -> str:
    """A new commit of `tree` with `parents` (no ref moves); returns its sha."""
    args = [arg for parent in parents for arg in ("-p", _ref_arg(parent))]
    return _run(repo, "commit-tree", _ref_arg(tree), *args, "-m", message)[1].strip()


def checkout_detached(worktree: Path, commit: str, *, force: bool = False) -> None:
    """Detach the HEAD of `worktree` at `commit`, updating the files (with `force`, local
    changes to tracked files are thrown away)."""
    args = ["--force"] if force else []
    _run(worktree, "checkout", "--quiet", *args, "--detach", _ref_arg(commit), cwd=worktree,
         config=(NO_HOOKS,))


def commit_everything(worktree: Path, message: str) -> None:
    """Commit every change in `worktree` (tracked and untracked) on its current branch, hooks off."""
    _run(worktree, "add", "-A", "--", ".", cwd=worktree)
    _run(worktree, "commit", "-q", "--no-verify", "-m", message, cwd=worktree, config=(NO_HOOKS,))


def checkout_branch(worktree: Path, branch: str) -> None:
    """Check `branch` out in `worktree` (which must be clean)."""
    _run(worktree, "checkout", "--quiet", validate_branch_name(branch), "--", cwd=worktree, config=(NO_HOOKS,))


def merge_ff_only(worktree: Path, commit: str) -> tuple[bool, str]:
    """Fast-forward the branch checked out in `worktree` to `commit`; (ok, git's message)."""
    status, out, err = _run(
        worktree, "merge", "--ff-only", "--quiet", _ref_arg(commit), cwd=worktree, check=False
    )
    return status == 0, (err or out).strip()


def push(repo: RepoLike, remote: str, refspec: str, *, timeout: float = 120.0) -> None:
    _run(
        repo,
        "push",
        "--quiet",
        "--",
        remote,
        refspec,
        env={"GIT_TERMINAL_PROMPT": "0"},
        timeout=timeout,
    )
