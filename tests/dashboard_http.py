"""Plain HTTP to a real `attractor dashboard` process, for the tests of its rules and API."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    host: str
    port: int
    token: str

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
                token: bool = True) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = dict(headers or {})
        if token:
            sent.setdefault("X-Attractor-Token", self.token)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: Any = None, **kwargs: Any) -> Answer:
        body = json.dumps(data if data is not None else {}).encode()
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return self.request("POST", path, body=body, headers=headers, **kwargs)

    def stream(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """An open server-sent-events response (the caller reads it and closes it)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("GET", path, headers={"X-Attractor-Token": self.token, **(headers or {})})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return response


def read_sse(response: http.client.HTTPResponse, count: int) -> list[dict[str, str]]:
    """The next `count` messages that have data (comments and `retry:` lines skipped)."""
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    while len(messages) < count:
        line = response.readline()
        assert line, f"the stream ended after {len(messages)} messages"
        text = line.decode().rstrip("\n")
        if text == "":
            if "data" in current:
                messages.append(current)
            current = {}
        elif not text.startswith(":"):
            key, _, value = text.partition(":")
            current[key] = value[1:] if value.startswith(" ") else value
    return messages


@contextlib.contextmanager
def dashboard(*args: str) -> Iterator[Server]:
    """`attractor dashboard --port 0 ARGS…` until the block ends (SIGINT, as Ctrl-C)."""
    proc = subprocess.Popen([sys.executable, "-m", "attractor", "dashboard", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("attractor dashboard: http://"), line + (proc.stderr.read() if proc.stderr else "")
        url = line.split(": ", 1)[1].strip()
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield Server(proc, url, parts.hostname, parts.port, url.split("token=", 1)[1])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def info_file(home: Path) -> Path:
    return home / ".local" / "state" / "attractor" / "dashboard.json"
