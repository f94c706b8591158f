"""store/formats.py: the file text, stamps, names and record fields that the stores and the hot
commands' short path share, held against what the stores and the standard library define."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from typing import Any, NamedTuple

import pytest

from attractor import clock, names
from attractor.errors import UsageError
from attractor.states import PHASE_MOVES, SignalKind
from attractor.store import formats, hooks, identities, payloads, signals


class Value(NamedTuple):
    test_id: str
    value: Any


VALUES = [
    Value("empty object", {}),
    Value("empty list", []),
    Value("nested", {"b": [1, {"z": None, "a": [True, False]}], "a": {"x": []}, "c": {}}),
    Value("text", {"s": "d\u00e9j\u00e0 \"vu\" \\ \n\t\x01 \U0001f600", "k\u00e9y": "v"}),
    Value("numbers", {"i": -12, "big": 10**30, "f": 1.5, "tiny": 1e-300, "nan": float("nan"),
                      "inf": float("inf"), "-inf": float("-inf")}),
    Value("tuple", {"t": (1, "2", (3,))}),
    Value("number keys", {10: "a", 2: "b", -1: "c"}),
    Value("float keys", {2.5: "a", 1e100: "b"}),
    Value("bool and null keys", {True: "a"}),
    Value("a bare string", "x"),
    Value("a record", {"schema": 1, "history": [{"at": "2026-01-01T00:00:00.000000Z", "from": None}] * 3}),
]


@pytest.mark.parametrize("case", VALUES, ids=[c.test_id for c in VALUES])
def test_dumps_writes_what_json_dumps_writes(case: Value) -> None:
    assert formats.dumps(case.value) == (json.dumps(case.value, indent=2, sort_keys=True) + "\n").encode()


@pytest.mark.parametrize("value", [{"x": object()}, {(1, 2): 3}], ids=["an object", "a tuple key"])
def test_dumps_refuses_what_json_dumps_refuses(value: Any) -> None:
    with pytest.raises(TypeError) as ours:
        formats.dumps(value)
    with pytest.raises(TypeError) as theirs:
        json.dumps(value, indent=2, sort_keys=True)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("text", ['{"a": [1, 2.5, "x", null, true]}', ' \n[]\t', '"\\u00e9"', "-0", '{"a": {}}'])
def test_loads_reads_what_json_loads_reads(text: str) -> None:
    assert formats.loads(text) == json.loads(text)
    assert formats.loads(text.encode()) == json.loads(text.encode())


@pytest.mark.parametrize("text", ["", "{", "{node: 1}", "[1,]", "1 2", "NaN", '"\x01"', "\ufeff{}"])
def test_loads_refuses_text_json_loads_refuses_or_it_leaves_to_json(text: str) -> None:
    with pytest.raises(ValueError):
        formats.loads(text)


def test_iso_stamp_is_the_text_clock_iso_writes() -> None:
    rng = random.Random(13)
    moments = [0.0, 1.0, 1_800_000_000.0, 1_800_000_000.9999995, 1_800_000_000.0000005, 1_799_999_999.9999999,
               *(rng.uniform(0, 4_000_000_000) for _ in range(2000)),
               *(rng.randrange(0, 4_000_000_000) + rng.randrange(0, 10**6) / 1e6 + 5e-7 for _ in range(2000))]
    for moment in moments:
        assert formats.iso_stamp(moment) == clock.iso(moment), moment
        assert formats.is_iso_stamp(clock.iso(moment))


@pytest.mark.parametrize("text", ["2026-02-29T00:00:00.000000Z", "2026-13-01T00:00:00.000000Z",
                                  "2026-01-01T24:00:00.000000Z", "2026-01-01T00:00:00.000000+00:00",
                                  "2026-01-01T00:00:00Z", "2026-01-01 00:00:00.000000Z", "0000-01-01T00:00:00.000000Z",
                                  "2026-01-01T00:00:00.00000aZ", 20260101])
def test_is_iso_stamp_refuses_any_other_text(text: Any) -> None:
    assert not formats.is_iso_stamp(text)


def test_a_leap_day_is_a_stamp() -> None:
    assert formats.is_iso_stamp("2024-02-29T23:59:59.999999Z")
    assert not formats.is_iso_stamp("1900-02-29T00:00:00.000000Z")


def test_names_are_checked_by_the_rule_of_their_patterns() -> None:
    rng = random.Random(7)
    alphabet = "az09_.-A/' \n%\u00e9"
    samples = ["", "a", "-a", "a" * 64, "a" * 65, "a" * 131, "a" * 132, "runner-impl_auth", "..", "a\n"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8))) for _ in range(3000)]
    for text in samples:
        assert _accepts(names.validate_name, text) is (re.fullmatch(names.NAME_PATTERN, text) is not None), text
        agent_ok = re.fullmatch(names.AGENT_ID_PATTERN, text) is not None
        assert _accepts(names.validate_agent_id, text) is agent_ok, text


def _accepts(check: Any, text: str) -> bool:
    try:
        check(text)
    except UsageError:
        return False
    return True


def test_record_fields_are_the_stores_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(identities.Identity)) == formats.IDENTITY_FIELDS
    assert tuple(f.name for f in dataclasses.fields(hooks.Hook)) == formats.HOOK_FIELDS
    assert formats.SIGNAL_FIELDS == signals._FIELDS
    assert formats.SCHEMA == identities.SCHEMA == hooks.SCHEMA == signals.SCHEMA


def test_phase_moves_are_the_state_machines() -> None:
    assert {phase.value: {m.value for m in moves} for phase, moves in PHASE_MOVES.items()} == {
        phase: set(moves) for phase, moves in formats.PHASE_MOVES.items()}


def test_payload_fields_are_the_payload_records() -> None:
    assert set(formats.PAYLOAD_FIELDS) == {kind.value for kind in SignalKind}
    for kind, cls in payloads.PAYLOAD_TYPES.items():
        declared = []
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                default: Any = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = formats.REQUIRED
            declared.append((field.name, cls.__annotations__[field.name], default))
        assert tuple(declared) == formats.PAYLOAD_FIELDS[kind.value], kind


class Payload(NamedTuple):
    test_id: str
    kind: str
    data: dict[str, Any]


PAYLOADS = [
    Payload("defaults filled in", "ORCHESTRATOR_DONE", {"node": "n"}),
    Payload("every field", "ORCHESTRATOR_STUCK", {"node": "n", "reason": "r", "quarantined": True}),
    Payload("a list", "MERGE_FAILED", {"entry_id": "e", "branch": "b", "reason": "conflict", "target": "t",
                                       "files": ["a"]}),
    Payload("missing a field", "MESSAGE", {}),
    Payload("unknown field", "SHUTDOWN", {"why": "x"}),
    Payload("a bool for an int", "VALIDATION_FAILED", {"node": "n", "commit": "c", "attempt": True}),
    Payload("a list of numbers", "MERGE_FAILED", {"entry_id": "e", "branch": "b", "reason": "conflict",
                                                  "target": "t", "files": [1]}),
    Payload("null for text", "ORCHESTRATOR_DONE", {"node": None}),
]


@pytest.mark.parametrize("case", PAYLOADS, ids=[c.test_id for c in PAYLOADS])
def test_plain_payload_takes_what_the_payload_record_takes(case: Payload) -> None:
    try:
        expected: dict[str, Any] | None = payloads.payload_from_json(SignalKind(case.kind), case.data).to_json()
    except UsageError:
        expected = None
    assert formats.plain_payload(case.kind, case.data) == expected
