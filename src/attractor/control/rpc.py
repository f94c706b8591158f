"""JSON-RPC 2.0 over newline-delimited JSON on a Unix socket: the daemon's wire format.

One request per line (a batch, a JSON array of requests, is one line too), answers in the order
the requests came, each on one line. A request is `{"jsonrpc": "2.0", "method": M, "params":
{…} or […], "id": N}`; without `id` it is a notification and gets no answer. Errors:

    -32700 parse error       the line is not JSON (or not UTF-8)
    -32600 invalid request   not a request object, or a line over MAX_REQUEST_BYTES
    -32601 method not found  (the message names the method)
    -32602 invalid params    bad input to the method: attractor's exit code 2 errors
    -32603 internal error    a bug; the message is the error's one line, the traceback is logged
    -32000 operation failed  attractor's exit code 1 errors (a lock timeout, a conflict);
                             `data.exit_code` carries the code the CLI would exit with

A method may answer with a `Stream` (`events.subscribe`): its result is answered as usual, then
each item is sent as a notification `{"jsonrpc": "2.0", "method": <stream's method>, "params":
item}` until the stream ends or the client closes the connection. A connection carrying a stream
carries nothing else: what the client sends on it is read and dropped, and closing it ends the
subscription.

The server gives every connection its own thread, so a slow method, a client that sends half a
line and waits, or one that stops reading stalls only itself: a partial line is dropped after
PARTIAL_LINE_TIMEOUT seconds, an answer that cannot be written within SEND_TIMEOUT seconds closes
the connection, and past MAX_CLIENTS connections a new one is answered with an error and closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from attractor.control.client import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    OPERATION_FAILED,
    PARSE_ERROR,
    RECV_CHUNK,
    DaemonNotRunningError,
    RpcError,
    call,
)
from attractor.errors import AttractorError, UsageError

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
MAX_CLIENTS = 512
SEND_TIMEOUT = 5.0
PARTIAL_LINE_TIMEOUT = 30.0
DRAIN_TIMEOUT = 2.0
ACCEPT_RETRY = 0.1
IDLE_TIMEOUT = 600.0  # a connection with no request in flight and no stream is closed after this

Params = dict[str, Any] | list[Any]


Method = Callable[[dict[str, Any]], Any]


@dataclass
class Stream:
    """A method's answer that goes on: `result` now, then one notification per item of
    `items`. An item None sends nothing: it lets the connection check that the client is still
    there, so a stream with nothing to say should yield None every second or so."""

    result: Any
    method: str
    items: Iterator[Any]

    def close(self) -> None:
        close = getattr(self.items, "close", None)
        if close is not None:
            close()


@dataclass
class Methods:
    """The methods a server answers: name -> function of the params object. Positional params
    (a JSON array) are refused with -32602: every method here takes named ones."""

    table: dict[str, Method] = field(default_factory=dict)

    def add(self, name: str, method: Method) -> None:
        self.table[name] = method

    def names(self) -> list[str]:
        return sorted(self.table)


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": RpcError(code, message, data).to_json(), "id": request_id}


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int)) and not isinstance(value, bool))


def answer_one(methods: Methods, request: Any, streams: list[Stream] | None = None) -> dict[str, Any] | None:
    """The answer to one decoded request (None for a notification). A Stream result is
    answered with its `result` and appended to `streams` (closed at once when that is None)."""
    if not isinstance(request, dict):
        return _error(None, INVALID_REQUEST, "a request is a JSON object")
    request_id = request.get("id")
    notification = "id" not in request
    if not _valid_id(request_id):
        return _error(None, INVALID_REQUEST, "id must be a string, an integer or null")
    if request.get("jsonrpc") != "2.0":
        return _error(request_id, INVALID_REQUEST, 'jsonrpc must be "2.0"')
    name = request.get("method")
    if not isinstance(name, str) or not name:
        return _error(request_id, INVALID_REQUEST, "method must be a non-empty string")
    unknown = sorted(set(request) - {"jsonrpc", "method", "params", "id"})
    if unknown:
        return _error(request_id, INVALID_REQUEST, f"unknown member(s): {', '.join(unknown)}")
    params = request.get("params", {})
    method = methods.table.get(name)
    try:
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, f"unknown method {name!r}; known: {', '.join(methods.names())}")
        if isinstance(params, list):
            raise RpcError(INVALID_PARAMS, f"{name}: give params as an object of named values, not a list")
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, f"{name}: params must be an object")
        logger.debug("rpc %s", name)
        result = method(params)
    except RpcError as exc:
        response = _error(request_id, exc.code, exc.message, exc.data)
    except UsageError as exc:
        response = _error(request_id, INVALID_PARAMS, str(exc), {"exit_code": exc.exit_code})
    except AttractorError as exc:
        response = _error(request_id, OPERATION_FAILED, str(exc), {"exit_code": exc.exit_code})
    except Exception as exc:  # a bug in a method: one line to the client, the traceback to the log
        logger.exception("rpc method %s failed", name)
        first = (str(exc).splitlines() or [""])[0]
        response = _error(request_id, INTERNAL_ERROR, f"{type(exc).__name__}: {first}"[:500])
    else:
        if isinstance(result, Stream):
            if streams is None or notification:
                result.close()
            else:
                streams.append(result)
            result = result.result
        response = {"jsonrpc": "2.0", "result": result, "id": request_id}
    return None if notification else response


def answer_line(methods: Methods, line: bytes, streams: list[Stream] | None = None) -> bytes | None:
    """The answer line (with its newline) to one request line; None when nothing is owed. A
    stream a method opened is appended to `streams` (not in a batch: there it is closed)."""
    answer: Any
    try:
        decoded = json.loads(line.decode("utf-8"))
    except RecursionError:
        answer = _error(None, INVALID_REQUEST, "nested too deeply")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        answer = _error(None, PARSE_ERROR, f"not JSON: {exc}")
    else:
        if isinstance(decoded, list):
            if not decoded:
                answer = _error(None, INVALID_REQUEST, "an empty batch")
            else:
                answers = [a for a in (answer_one(methods, r) for r in decoded) if a is not None]
                answer = answers or None
        else:
            answer = answer_one(methods, decoded, streams)
    if answer is None:
        return None
    return (json.dumps(answer, separators=(",", ":"), default=str) + "\n").encode()


class Connection:
    """One client: lines in, answers out, on a thread of its own."""

    def __init__(self, sock: socket.socket, methods: Methods, done: Callable[[Connection], None]) -> None:
        self.sock = sock
        self.methods = methods
        self.done = done

    def send(self, data: bytes) -> None:
        self.sock.settimeout(SEND_TIMEOUT)
        self.sock.sendall(data)

    def lines(self) -> Iterator[bytes]:
        """Complete lines as they arrive; a line over the limit is answered and ends the stream."""
        buffer = b""
        while True:
            self.sock.settimeout(PARTIAL_LINE_TIMEOUT if buffer else IDLE_TIMEOUT)
            try:
                chunk = self.sock.recv(RECV_CHUNK)
            except TimeoutError:
                logger.info("rpc client went quiet%s; closing", " half-way through a line" if buffer else "")
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if len(line) > MAX_REQUEST_BYTES:
                    self.refuse_too_long()
                    return
                if line.strip():
                    yield line
            if len(buffer) > MAX_REQUEST_BYTES:
                self.refuse_too_long()
                return

    def stream(self, stream: Stream) -> None:
        """Send the stream's items until it ends or the client is gone."""
        try:
            for item in stream.items:
                if item is None:
                    if self.client_gone():
                        return
                    continue
                note = {"jsonrpc": "2.0", "method": stream.method, "params": item}
                self.send((json.dumps(note, separators=(",", ":"), default=str) + "\n").encode())
        finally:
            stream.close()

    def client_gone(self) -> bool:
        """Whether the client closed its end (what it sent meanwhile is dropped)."""
        self.sock.setblocking(False)  # a socket timeout would make the check wait that long
        try:
            while True:
                if not self.sock.recv(RECV_CHUNK):
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def refuse_too_long(self) -> None:
        """Answer -32600 and close; the rest of what the client sends is read and dropped for
        a moment first, so the answer is not lost to a reset."""
        error = _error(None, INVALID_REQUEST, f"request over {MAX_REQUEST_BYTES} bytes; refused")
        self.send((json.dumps(error) + "\n").encode())
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(DRAIN_TIMEOUT)
            while self.sock.recv(RECV_CHUNK):
                pass

    def serve(self) -> None:
        try:
            for line in self.lines():
                streams: list[Stream] = []
                out = answer_line(self.methods, line, streams)
                if out is not None:
                    self.send(out)
                if streams:
                    self.stream(streams[0])
                    return
        except OSError as exc:  # the client went away or stopped reading
            logger.info("rpc client dropped: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.done(self)


class Server:
    """A listening Unix socket answering `methods`, one thread per client, until `stop()`."""

    def __init__(self, listener: socket.socket, methods: Methods, max_clients: int = MAX_CLIENTS) -> None:
        self.listener = listener
        self.methods = methods
        self.max_clients = max_clients
        self._clients: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def _done(self, conn: Connection) -> None:
        with self._lock:
            self._clients.discard(conn)

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                # out of file descriptors, say: this client is lost, the daemon is not
                logger.warning("rpc accept failed: %s; going on", exc)
                self._stopping.wait(ACCEPT_RETRY)
                continue
            conn = Connection(sock, self.methods, self._done)
            with self._lock:
                full = len(self._clients) >= self.max_clients
                if not full:
                    self._clients.add(conn)
            if full:
                busy = _error(None, OPERATION_FAILED, "too many clients; try again", {"exit_code": 1, "busy": True})
                with contextlib.suppress(OSError):
                    conn.send((json.dumps(busy) + "\n").encode())
                sock.close()
                continue
            threading.Thread(target=conn.serve, name="rpc-client", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            clients = list(self._clients)
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


__all__ = ["INTERNAL_ERROR", "INVALID_PARAMS", "INVALID_REQUEST", "METHOD_NOT_FOUND", "OPERATION_FAILED",
           "PARSE_ERROR", "Connection", "DaemonNotRunningError", "Methods", "RpcError", "Server", "Stream",
           "answer_line", "answer_one", "call"]
