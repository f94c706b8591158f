"""The daemon's wire format: JSON-RPC 2.0 over newline-delimited JSON on a real Unix socket,
served by `control.rpc.Server` on threads of this process, talked to by real socket clients."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from attractor.control import rpc
from attractor.errors import AttractorError, BadInputError
from tests.helpers import retry_until


def _methods() -> rpc.Methods:
    m = rpc.Methods()
    m.add("echo", lambda p: p)
    m.add("bad_input", lambda p: (_ for _ in ()).throw(BadInputError("thing", "wrong shape")))
    m.add("conflict", lambda p: (_ for _ in ()).throw(AttractorError("lock held by pid 7")))
    m.add("bug", lambda p: (_ for _ in ()).throw(ValueError("boom\nsecond line")))
    m.add("big", lambda p: "x" * int(p.get("size", 1 << 20)))

    def slow(p: dict[str, Any]) -> str:
        time.sleep(float(p.get("seconds", 1)))
        return "slept"

    m.add("slow", slow)
    return m


@contextlib.contextmanager
def _serving(tmp_path: Path, max_clients: int = rpc.MAX_CLIENTS) -> Iterator[tuple[rpc.Server, Path]]:
    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(256)
    srv = rpc.Server(listener, _methods(), max_clients=max_clients)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, path
    finally:
        srv.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[rpc.Server, Path]]:
    with _serving(tmp_path) as served:
        yield served


def _client(path: Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def _lines(sock: socket.socket, count: int) -> list[Any]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.split(b"\n")[:count]]


class ErrorCase(NamedTuple):
    test_id: str
    line: bytes
    code: int
    words: str


ERROR_CASES = [
    ErrorCase("not-json", b"{nope", rpc.PARSE_ERROR, "not JSON"),
    ErrorCase("not-utf8", b"\xff\xfe{}", rpc.PARSE_ERROR, "not JSON"),
    ErrorCase("a-string", b'"hello"', rpc.INVALID_REQUEST, "JSON object"),
    ErrorCase("empty-batch", b"[]", rpc.INVALID_REQUEST, "empty batch"),
    ErrorCase("old-version", b'{"jsonrpc": "1.0", "method": "echo", "id": 1}', rpc.INVALID_REQUEST, '"2.0"'),
    ErrorCase("method-number", b'{"jsonrpc": "2.0", "method": 5, "id": 1}', rpc.INVALID_REQUEST, "method"),
    ErrorCase("id-object", b'{"jsonrpc": "2.0", "method": "echo", "id": {}}', rpc.INVALID_REQUEST, "id"),
    ErrorCase("stray-member", b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "x": 1}', rpc.INVALID_REQUEST,
              "unknown member(s): x"),
    ErrorCase("unknown-method", b'{"jsonrpc": "2.0", "method": "nope", "id": 1}', rpc.METHOD_NOT_FOUND, "'nope'"),
    ErrorCase("positional", b'{"jsonrpc": "2.0", "method": "echo", "params": [1], "id": 1}', rpc.INVALID_PARAMS,
              "named"),
    ErrorCase("params-number", b'{"jsonrpc": "2.0", "method": "echo", "params": 3, "id": 1}', rpc.INVALID_PARAMS,
              "object"),
    ErrorCase("bad-input", b'{"jsonrpc": "2.0", "method": "bad_input", "id": 1}', rpc.INVALID_PARAMS,
              "thing: wrong shape"),
    ErrorCase("operational", b'{"jsonrpc": "2.0", "method": "conflict", "id": 1}', rpc.OPERATION_FAILED,
              "lock held by pid 7"),
    ErrorCase("bug", b'{"jsonrpc": "2.0", "method": "bug", "id": 1}', rpc.INTERNAL_ERROR, "ValueError: boom"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.test_id for c in ERROR_CASES])
def test_every_error_code_and_the_server_answers_on(server: tuple[rpc.Server, Path], case: ErrorCase) -> None:
    _, path = server
    with _client(path) as sock:
        sock.sendall(case.line + b"\n" + b'{"jsonrpc": "2.0", "method": "echo", "params": {"a": 1}, "id": 2}\n')
        error, after = _lines(sock, 2)
    assert error["error"]["code"] == case.code, error
    assert case.words in error["error"]["message"], error
    assert "\n" not in error["error"]["message"]
    assert after == {"jsonrpc": "2.0", "result": {"a": 1}, "id": 2}


def test_exit_codes_travel_with_the_errors(server: tuple[rpc.Server, Path]) -> None:
    _, path = server
    with pytest.raises(rpc.RpcError) as caught:
        rpc.call(path, "conflict")
    assert caught.value.exit_code == 1 and caught.value.data == {"exit_code": 1}
    with pytest.raises(rpc.RpcError) as caught:
        rpc.call(path, "bad_input")
    assert caught.value.exit_code == 2
    with pytest.raises(rpc.RpcError) as caught:
        rpc.call(path, "nope")
    assert caught.value.exit_code == 2


def test_notifications_get_no_answer_batches_get_one_and_answers_keep_order(server: tuple[rpc.Server, Path]) -> None:
    _, path = server
    with _client(path) as sock:
        sock.sendall(b'{"jsonrpc": "2.0", "method": "echo", "params": {"n": 0}}\n'
                     b'[{"jsonrpc": "2.0", "method": "echo", "params": {"n": 1}, "id": "a"},'
                     b' {"jsonrpc": "2.0", "method": "echo", "params": {"n": 2}},'
                     b' {"jsonrpc": "2.0", "method": "nope", "id": "b"}]\n'
                     b'{"jsonrpc": "2.0", "method": "slow", "params": {"seconds": 0.3}, "id": 3}\n'
                     b'{"jsonrpc": "2.0", "method": "echo", "params": {"n": 4}, "id": 4}\n')
        batch, slow, last = _lines(sock, 3)
    assert [a["id"] for a in batch] == ["a", "b"] and batch[0]["result"] == {"n": 1}
    assert batch[1]["error"]["code"] == rpc.METHOD_NOT_FOUND
    assert slow["result"] == "slept" and last["id"] == 4


def test_a_10_mb_request_is_refused_and_nothing_else_notices(server: tuple[rpc.Server, Path]) -> None:
    _, path = server
    with _client(path) as sock:
        big = b'{"jsonrpc": "2.0", "method": "echo", "params": {"x": "' + b"y" * (10 << 20) + b'"}, "id": 1}\n'
        sender = threading.Thread(target=lambda: _send_ignoring_reset(sock, big), daemon=True)
        sender.start()
        (answer,) = _lines(sock, 1)
        sender.join(timeout=30)
    assert answer["error"]["code"] == rpc.INVALID_REQUEST and "over" in answer["error"]["message"]
    assert rpc.call(path, "echo", {"ok": True}) == {"ok": True}


def _send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closes after refusing: expected
        sock.sendall(data)


def test_half_a_line_then_silence_stalls_only_that_client(server: tuple[rpc.Server, Path]) -> None:
    _, path = server
    with _client(path) as hanging:
        hanging.sendall(b'{"jsonrpc": "2.0", "method": "ec')
        started = time.monotonic()
        for n in range(20):
            assert rpc.call(path, "echo", {"n": n}, timeout=5) == {"n": n}
        assert time.monotonic() - started < 30  # answered while the half line waits (not a timing goal)
        hanging.sendall(b'ho", "params": {"late": 1}, "id": 9}\n')
        (late,) = _lines(hanging, 1)
    assert late["result"] == {"late": 1}


def test_a_client_that_stops_reading_is_dropped_and_others_go_on(server: tuple[rpc.Server, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    srv, path = server
    monkeypatch.setattr(rpc, "SEND_TIMEOUT", 0.5)
    greedy = _client(path)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = b'{"jsonrpc": "2.0", "method": "big", "params": {"size": 4000000}, "id": 1}\n'
    greedy.sendall(request * 5)  # ~20 MB of answers it never reads
    try:
        assert rpc.call(path, "echo", {"still": "here"}) == {"still": "here"}
        retry_until(lambda: srv.client_count == 0, 30, what="the server to drop the client that does not read")
    finally:
        greedy.close()


def test_200_concurrent_clients_each_get_their_own_answers(server: tuple[rpc.Server, Path]) -> None:
    _, path = server
    results: dict[int, list[Any]] = {}
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with _client(path, timeout=60) as sock:
                sock.sendall(b"".join(json.dumps({"jsonrpc": "2.0", "method": "echo", "params": {"c": n, "i": i},
                                                  "id": i}).encode() + b"\n" for i in range(5)))
                results[n] = _lines(sock, 5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert sorted(results) == list(range(200))
    for n, answers in results.items():
        assert [a["result"] for a in answers] == [{"c": n, "i": i} for i in range(5)]


def test_past_the_client_limit_a_new_client_is_told_and_closed(tmp_path: Path) -> None:
    with _serving(tmp_path, max_clients=2) as (srv, path):
        held = [_client(path), _client(path)]
        retry_until(lambda: srv.client_count == 2, 10)
        with _client(path) as third:
            (answer,) = _lines(third, 1)
        assert "too many clients" in answer["error"]["message"]
        held[0].close()
        retry_until(lambda: srv.client_count == 1, 10)
        assert rpc.call(path, "echo", {}) == {}
        held[1].close()


def test_call_names_a_missing_daemon(tmp_path: Path) -> None:
    with pytest.raises(rpc.DaemonNotRunningError, match="attractor daemon start"):
        rpc.call(tmp_path / "none.sock", "status")
    dead = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(dead))
    sock.close()  # the file stays, nobody listens
    with pytest.raises(rpc.DaemonNotRunningError):
        rpc.call(dead, "status")


def test_a_request_nested_too_deeply_is_refused_and_the_connection_goes_on(server: tuple[rpc.Server, Path]) -> None:
    _, path = server
    with _client(path) as sock:
        sock.sendall(b"[" * 200_000 + b"]" * 200_000 + b"\n" + b'{"jsonrpc": "2.0", "method": "echo", "id": 2}\n')
        refused, after = _lines(sock, 2)
    assert refused["error"]["code"] == rpc.INVALID_REQUEST and "deeply" in refused["error"]["message"]
    assert after["result"] == {}


def test_a_busy_daemon_is_no_daemon_to_a_command_so_it_reads_the_files(tmp_path: Path) -> None:
    with _serving(tmp_path, max_clients=1) as (srv, path):
        held = _client(path)
        retry_until(lambda: srv.client_count == 1, 10)
        with pytest.raises(rpc.DaemonNotRunningError, match="too many clients"):
            rpc.call(path, "echo", {})
        held.close()
