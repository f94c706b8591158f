"""gitops: the one door to git, against real repositories in tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor import gitops
from attractor.errors import EXIT_USAGE, AlreadyExistsError, GitError, UsageError
from tests.helpers import commit_file, git, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"a.txt": "one\n", "b.txt": "two\n"})


def test_open_repo_refuses_a_plain_directory_and_a_bare_repo(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(gitops.NotAGitRepositoryError) as caught:
        gitops.open_repo(plain)
    assert caught.value.exit_code == EXIT_USAGE
    assert str(plain) in str(caught.value) and "give the path of a git checkout" in str(caught.value)
    with pytest.raises(gitops.NotAGitRepositoryError, match="no such directory"):
        gitops.open_repo(tmp_path / "missing")
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "bare.git")], check=True)
    with pytest.raises(gitops.NotAGitRepositoryError, match="bare"):
        gitops.open_repo(tmp_path / "bare.git")


def test_open_repo_from_a_subdirectory_and_a_linked_worktree(repo: Path) -> None:
    (repo / "sub").mkdir()
    assert gitops.open_repo(repo / "sub").root == repo
    other = gitops.ensure_worktree(repo, repo / ".claude" / "worktrees" / "n1", "attractor/r1/n1")
    opened = gitops.open_repo(other)
    assert opened.path == other
    assert opened.root == repo  # `.claude/` always lives in the main checkout


def test_rev_parse_and_branch_queries(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    assert gitops.rev_parse(repo, "main") == head
    assert gitops.rev_parse(repo, "refs/heads/nope") is None
    assert gitops.rev_parse(repo, head[:10]) == head
    with pytest.raises(UsageError):
        gitops.rev_parse(repo, "--all")  # never passed to git as an option
    assert gitops.branch_exists(repo, "main")
    assert not gitops.branch_exists(repo, "nope")
    assert gitops.current_branch(repo) == "main"
    git(repo, "checkout", "-q", "--detach")
    assert gitops.current_branch(repo) is None


class BranchCase(NamedTuple):
    test_id: str
    name: str
    valid: bool


BRANCH_CASES = [
    BranchCase("plain", "main", True),
    BranchCase("attractor-layout", "attractor/run-1/impl_auth", True),
    BranchCase("dots-inside", "release/1.2.3", True),
    BranchCase("double-dot", "a..b", False),
    BranchCase("space", "a b", False),
    BranchCase("leading-dash", "-x", False),
    BranchCase("trailing-slash", "a/", False),
    BranchCase("double-slash", "a//b", False),
    BranchCase("lock-suffix", "a/b.lock", False),
    BranchCase("dot-component", "a/.hidden", False),
    BranchCase("reflog-syntax", "a@{1}", False),
    BranchCase("tilde", "a~1", False),
    BranchCase("colon", "a:b", False),
    BranchCase("glob", "a*", False),
    BranchCase("trailing-dot", "a.", False),
]


@pytest.mark.parametrize("case", BRANCH_CASES, ids=[c.test_id for c in BRANCH_CASES])
def test_branch_names_agree_with_git(case: BranchCase) -> None:
    by_git = not case.name.startswith("-") and subprocess.run(
        ["git", "check-ref-format", f"refs/heads/{case.name}"], capture_output=True).returncode == 0
    assert by_git == case.valid
    if case.valid:
        assert gitops.validate_branch_name(case.name) == case.name
    else:
        with pytest.raises(gitops.InvalidBranchError):
            gitops.validate_branch_name(case.name)


def test_branch_name_validates_run_and_node() -> None:
    assert gitops.branch_name("run1", "impl_auth") == "attractor/run1/impl_auth"
    with pytest.raises(UsageError):
        gitops.branch_name("run1", "../etc")
    with pytest.raises(UsageError):
        gitops.branch_name("Run 1", "impl")


def test_ensure_worktree_creates_the_branch_and_is_idempotent(repo: Path) -> None:
    path = gitops.worktree_path(repo, "impl_auth")
    assert path == repo / ".claude" / "worktrees" / "impl_auth"
    created = gitops.ensure_worktree(repo, path, "attractor/r1/impl_auth")
    assert created == path and (path / "a.txt").exists()
    assert gitops.current_branch(repo, cwd=path) == "attractor/r1/impl_auth"
    assert gitops.rev_parse(repo, "attractor/r1/impl_auth") == gitops.rev_parse(repo, "main")
    commit_file(path, "c.txt", "work\n")
    # Again, even with another path: the existing worktree of that branch is reused.
    assert gitops.ensure_worktree(repo, repo / "elsewhere", "attractor/r1/impl_auth") == path
    assert not (repo / "elsewhere").exists()
    assert gitops.worktree_for_branch(repo, "attractor/r1/impl_auth") == path
    # State and worktrees never show up in the user's `git status`.
    (repo / ".claude" / "state").mkdir()
    (repo / ".claude" / "state" / "x.json").write_text("{}")
    assert git(repo, "status", "--porcelain") == ""
    assert gitops.is_clean(repo)


def test_ensure_worktree_checks_out_an_existing_branch(repo: Path) -> None:
    git(repo, "branch", "feature")
    commit_file(repo, "a.txt", "main moved\n")
    path = gitops.ensure_worktree(repo, gitops.worktree_path(repo, "f"), "feature")
    assert gitops.head_of(path) == gitops.rev_parse(repo, "feature")


def test_ensure_worktree_refuses_a_foreign_directory(repo: Path) -> None:
    path = gitops.worktree_path(repo, "busy")
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("user data")
    with pytest.raises(GitError, match="git worktree add"):
        gitops.ensure_worktree(repo, path, "attractor/r1/busy")
    assert (path / "keep.txt").read_text() == "user data"


def test_remove_worktree_with_changes_and_when_already_gone(repo: Path) -> None:
    path = gitops.ensure_worktree(repo, gitops.worktree_path(repo, "n"), "attractor/r1/n")
    (path / "a.txt").write_text("dirty\n")
    assert not gitops.is_clean(path)
    gitops.remove_worktree(repo, path)
    assert not path.exists()
    assert [t.path for t in gitops.list_worktrees(repo)] == [repo]
    gitops.remove_worktree(repo, path)  # idempotent
    # A worktree whose directory vanished is pruned.
    path = gitops.ensure_worktree(repo, gitops.worktree_path(repo, "m"), "attractor/r1/m")
    subprocess.run(["rm", "-rf", str(path)], check=True)
    gitops.remove_worktree(repo, path)
    assert [t.path for t in gitops.list_worktrees(repo)] == [repo]


def test_exclude_path_adds_a_pattern_once(repo: Path) -> None:
    assert gitops.exclude_path(repo, ".claude/")
    assert not gitops.exclude_path(repo, ".claude/")
    lines = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert lines.count(".claude/") == 1


def test_is_clean_sees_modified_staged_and_untracked(repo: Path) -> None:
    assert gitops.is_clean(repo)
    (repo / "new.txt").write_text("x")
    assert not gitops.is_clean(repo)
    assert gitops.is_clean(repo, untracked=False)
    git(repo, "add", "new.txt")
    assert not gitops.is_clean(repo, untracked=False)


def test_commits_between_and_changed_files(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "topic")
    first = commit_file(repo, "x.txt", "1\n")
    second = commit_file(repo, "a.txt", "changed\n")
    git(repo, "checkout", "-q", "main")
    commit_file(repo, "b.txt", "main only\n")
    assert gitops.commits_between(repo, "main", "topic") == [first, second]
    assert gitops.changed_files(repo, "main", "topic") == ["a.txt", "x.txt"]
    assert gitops.merge_base(repo, "main", "topic") == base
    assert gitops.is_ancestor(repo, base, "topic")
    assert not gitops.is_ancestor(repo, "topic", "main")


def test_update_ref_is_a_compare_and_swap(repo: Path) -> None:
    old = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "side")
    new = commit_file(repo, "s.txt", "s\n")
    assert gitops.update_ref(repo, "refs/heads/target", old, "0" * 40)  # create
    assert not gitops.update_ref(repo, "refs/heads/target", new, new)  # stale expectation
    assert gitops.rev_parse(repo, "target") == old
    assert gitops.update_ref(repo, "refs/heads/target", new, old)
    assert gitops.rev_parse(repo, "target") == new


def test_create_and_delete_branch(repo: Path) -> None:
    sha = gitops.create_branch(repo, "attractor/r1/x", "main")
    assert sha == gitops.rev_parse(repo, "main")
    with pytest.raises(AlreadyExistsError):
        gitops.create_branch(repo, "attractor/r1/x", "main")
    with pytest.raises(GitError, match=r"^git branch: "):
        gitops.create_branch(repo, "attractor/r1/y", "no-such-start")
    assert not gitops.delete_branch(repo, "attractor/r1/x", expected_sha="1" * 40)
    assert gitops.delete_branch(repo, "attractor/r1/x", expected_sha=sha)
    assert not gitops.delete_branch(repo, "attractor/r1/x")
    path = gitops.ensure_worktree(repo, gitops.worktree_path(repo, "z"), "attractor/r1/z")
    with pytest.raises(gitops.BranchCheckedOutError, match=str(path)):
        gitops.delete_branch(repo, "attractor/r1/z")


def test_rebase_reports_conflicting_files_and_aborts(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "topic")
    commit_file(repo, "a.txt", "topic\n")
    git(repo, "checkout", "-q", "main")
    commit_file(repo, "a.txt", "main\n")
    path = gitops.add_detached_worktree(repo, repo / ".claude" / "worktrees" / "_t", "topic")
    result = gitops.rebase(path, gitops.rev_parse(repo, "main") or "")
    assert not result.ok and result.conflicts == ("a.txt",)
    assert gitops.head_of(path) == gitops.rev_parse(repo, "topic")  # aborted
    gitops.remove_worktree(repo, path)


def test_pick_onto_replays_one_commit_in_memory(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "one")
    commit_file(repo, "new.txt", "new\n", "subject\n\nbody\n\nTrailer: x")
    git(repo, "checkout", "-q", "-b", "clash", "main")
    commit_file(repo, "a.txt", "clash\n")
    git(repo, "checkout", "-q", "main")
    tip = commit_file(repo, "a.txt", "main\n")
    picked = gitops.pick_onto(repo, gitops.rev_parse(repo, "one") or "", tip)
    assert picked.ok and picked.commit is not None
    assert git(repo, "rev-parse", f"{picked.commit}^") == tip
    fmt = "--format=%an %ae %ad%n%B"
    assert git(repo, "log", "-1", fmt, picked.commit) == git(repo, "log", "-1", fmt, "one")
    assert git(repo, "show", f"{picked.commit}:new.txt") == "new"
    assert git(repo, "show", f"{picked.commit}:a.txt") == "main"
    assert gitops.is_clean(repo) and len(gitops.list_worktrees(repo)) == 1  # nothing touched
    clash = gitops.pick_onto(repo, gitops.rev_parse(repo, "clash") or "", tip)
    assert not clash.ok and clash.conflicts == ("a.txt",)
    git(repo, "merge", "-q", "--ff-only", picked.commit)
    same = gitops.pick_onto(repo, gitops.rev_parse(repo, "one") or "", picked.commit)
    assert same.commit == picked.commit  # its change is already on the target


_WORKTREE_CHURN = """
import sys
from pathlib import Path
from attractor import gitops
repo, me = Path(sys.argv[1]), sys.argv[2]
for i in range(6):
    tree = repo / ".claude" / "worktrees" / f"{me}-{i}"
    gitops.ensure_worktree(repo, tree, f"attractor/churn/{me}-{i}", base="main")
    check = gitops.add_detached_worktree(repo, repo / ".claude" / "worktrees" / f"_validate-{me}-{i}", "main")
    gitops.remove_worktree(repo, check)
    gitops.remove_worktree(repo, tree)
print("ok")
"""


def test_worktree_changes_of_many_processes_never_trip_over_each_other(tmp_path: Path) -> None:
    # runners adding worktrees while the guardian adds and prunes validation trees: git's own
    # worktree list is shared, so its changes are serialised (a lock beside it)
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    procs = [subprocess.Popen([sys.executable, "-c", _WORKTREE_CHURN, str(repo), f"p{n}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(6)]
    results = [(*p.communicate(timeout=240), p.returncode) for p in procs]
    failures = [err for out, err, code in results if code != 0 or out.strip() != "ok"]
    assert not failures, failures[0][-2000:]
    assert gitops.list_worktrees(repo)[0].path == repo and len(gitops.list_worktrees(repo)) == 1


_HOLD_WORKTREE_LOCK = """
import sys, time
from attractor import gitops
with gitops.worktree_changes(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_held_worktree_lock_times_out_by_name_and_a_killed_holder_lets_go(repo: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_WORKTREE_LOCK, str(repo)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(GitError, match=gitops.WORKTREE_LOCK), gitops.worktree_changes(repo, timeout=0.3):
            pass
        holder.kill()
        holder.wait(timeout=30)
        with gitops.worktree_changes(repo, timeout=30):
            pass
        gitops.remove_worktree(repo, gitops.add_detached_worktree(repo, repo.parent / "check", "main"))
    finally:
        holder.kill()
        holder.wait(timeout=30)
