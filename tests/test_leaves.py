from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor import names, states
from attractor.errors import (
    CorruptStateError,
    InvalidNameError,
    StateDirError,
    TransitionError,
    UnknownValueError,
)
from attractor.store import atomic


class NameCase(NamedTuple):
    test_id: str
    value: str
    ok: bool


NAME_CASES = [
    NameCase("simple", "impl_auth", True),
    NameCase("digits-dots", "a1.b-2", True),
    NameCase("slash", "a/b", False),
    NameCase("dotdot", "..", False),
    NameCase("traversal", "../etc", False),
    NameCase("space", "a b", False),
    NameCase("single-quote", "a'b", False),
    NameCase("double-quote", 'a"b', False),
    NameCase("tmux-meta", "a;b", False),
    NameCase("dollar", "a$b", False),
    NameCase("upper", "Abc", False),
    NameCase("empty", "", False),
    NameCase("too-long", "a" * 65, False),
    NameCase("max-len", "a" * 64, True),
    NameCase("leading-dash", "-x", False),
    NameCase("newline", "a\nb", False),
]


@pytest.mark.parametrize("case", NAME_CASES, ids=[c.test_id for c in NAME_CASES])
def test_validate_name(case: NameCase) -> None:
    if case.ok:
        assert names.validate_name(case.value) == case.value
    else:
        with pytest.raises(InvalidNameError) as info:
            names.validate_name(case.value, "node name")
        assert "node name" in str(info.value)


def test_split_agent_id() -> None:
    assert names.split_agent_id("runner-impl_auth") == ("runner", "impl_auth")
    assert names.split_agent_id("merge-queue-main") == ("merge-queue", "main")
    with pytest.raises(InvalidNameError):
        names.split_agent_id("nobody-x")


def test_unknown_role() -> None:
    with pytest.raises(UnknownValueError) as info:
        names.agent_id("wizard", "x")
    assert "runner" in str(info.value)


def test_transition_names_current_and_allowed() -> None:
    P = states.HookPhase
    assert states.transition("hook", P.SPAWNED, P.EXECUTING, states.PHASE_MOVES) is P.EXECUTING
    with pytest.raises(TransitionError) as info:
        states.transition("hook runner-a", P.SPAWNED, P.MERGED, states.PHASE_MOVES)
    text = str(info.value)
    assert "spawned -> merged" in text and "executing" in text and "failed" in text


def test_atomic_write_and_strict_read(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    atomic.write_json_atomic(path, {"schema": 1, "a": 1})
    assert atomic.read_json_object(path, schema=1) == {"schema": 1, "a": 1}
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp left


@pytest.mark.parametrize("content", [b"", b"{", b"[1]", b'{"schema": 99}', b"\xff\xfe"])
def test_corrupt_file_moved_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(CorruptStateError) as info:
        atomic.read_json_object(path, schema=1)
    assert str(path) in str(info.value)
    assert not path.exists()
    assert info.value.moved_to is not None and info.value.moved_to.exists()


def test_private_dir_refuses_world_writable(tmp_path: Path) -> None:
    d = tmp_path / "state"
    atomic.ensure_private_dir(d)
    assert d.stat().st_mode & 0o777 == 0o700
    os.chmod(d, 0o777)
    with pytest.raises(StateDirError) as info:
        atomic.ensure_private_dir(d)
    assert "chmod 700" in str(info.value)


def test_replacement_stages_before_and_cleans_up_after(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"old")
    with open(path, "rb") as reader:  # a reader of the old version keeps reading it whole
        with atomic.Replacement(path) as new:
            staged = [p.name for p in tmp_path.iterdir() if p.name != "x.json"]
            assert len(staged) == 1 and staged[0].startswith(".x.json.tmp-")  # made on entry
            assert path.read_bytes() == b"old"
            new.commit(b"new", fsync=False)
            assert path.read_bytes() == b"new"
            # the replaced version is held open until the block ends, then freed
            assert new.replaced is not None and os.fstat(new.replaced).st_nlink == 0
            with pytest.raises(RuntimeError):
                new.commit(b"again")
        assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
        assert reader.read() == b"old"


def test_replacement_without_commit_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    with atomic.Replacement(path):  # a first version that is never written
        pass
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old")
    with pytest.raises(ValueError), atomic.Replacement(path):
        raise ValueError("decided not to write")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"] and path.read_bytes() == b"old"
    with atomic.Replacement(tmp_path / "fresh.json") as new:
        new.commit(b"first")
    assert (tmp_path / "fresh.json").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "x.json"]


def test_payload_field_types_are_all_checked() -> None:
    from attractor.store import payloads

    for cls in payloads.PAYLOAD_TYPES.values():
        for name, annotation in cls.__annotations__.items():
            if name != "kind":
                assert str(annotation) in payloads._JSON_TYPES, (cls.__name__, name)


def test_payload_strict_parse() -> None:
    from attractor.errors import BadInputError
    from attractor.store import payloads

    kind = states.SignalKind.MERGE_READY
    good = {"node": "a", "branch": "b", "commit": "c", "owner": "runner-a"}
    assert payloads.payload_from_json(kind, good).to_json()["priority"] == 0
    for bad in ({"node": "a"}, {**good, "extra": 1}, {**good, "priority": "x"}, [1]):
        with pytest.raises(BadInputError):
            payloads.payload_from_json(kind, bad)


@pytest.mark.parametrize("data", [b"", b"abc", bytes(range(256)) * 300], ids=["empty", "short", "long"])
def test_sha256_hex_is_sha256_whichever_implementation_answers(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    expected = hashlib.sha256(data).hexdigest()
    modules = names._SHA256_MODULES
    for first in range(len(modules)):
        monkeypatch.setattr(names, "_SHA256_MODULES", modules[first:])
        assert names.sha256_hex(data) == expected
