"""The scripted model server's core: the HTTP server, the neutral conversation and the playbook.

The server stands in for the model only: the real agent CLIs (Claude Code, Codex, Aider) talk to
it over HTTP on 127.0.0.1 as they would to the real API, and it answers from a per-test
*playbook* instead of a model. Each wire format lives in its own module (`anthropic`,
`responses`, `chat`) and registers its routes here; it turns a request into a neutral
`Conversation`, asks the playbook for the next `Action`, and writes that action back in its own
format (streaming when the client asked for it).

A playbook is any callable `(Conversation) -> Action`. `NodePlaybook` plays a list of neutral
steps per pipeline node: the step taken is the number of assistant turns already in the
conversation, so the server holds no state of its own and a resumed session carries on where it
was.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# --- the neutral conversation ----------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model made earlier in the conversation (as the client sends it back)."""

    name: str
    arguments: dict[str, Any]
    call_id: str = ""


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    output: str
    is_error: bool = False


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant" | "tool"
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """What the model sees at one request, whatever the wire format."""

    api: str  # "anthropic" | "responses" | "chat"
    model: str
    system: str
    messages: tuple[Message, ...]
    tools: tuple[str, ...]  # names of the tools offered
    stream: bool
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def text(self) -> str:
        """Every piece of text in the request: system, user and tool output."""
        parts = [self.system]
        for message in self.messages:
            parts.append(message.text)
            parts.extend(result.output for result in message.tool_results)
        return "\n".join(part for part in parts if part)

    def user_text(self) -> str:
        return "\n".join(m.text for m in self.messages if m.role == "user" and m.text)

    def assistant_turns(self) -> int:
        """Assistant turns since the latest attractor prompt (a resumed session that is given a
        new prompt, e.g. for attempt 2, starts its steps again)."""
        count = 0
        for message in self.messages:
            if message.role == "user" and "## Your task (node `" in message.text:
                count = 0
            elif message.role == "assistant":
                count += 1
        return count

    def node(self) -> str | None:
        """The pipeline node this agent works on, read from attractor's prompt."""
        found = re.search(r"## Your task \(node `([^`]+)`\)", self.text())
        return found.group(1) if found else None

    def attempt(self) -> int:
        found = re.findall(r"^Attempt: (\d+)$", self.text(), re.MULTILINE)
        return int(found[-1]) if found else 1

    def report_command(self, kind: str = "ORCHESTRATOR_DONE", summary: str = "done") -> str | None:
        """The report command attractor's prompt gives, with its placeholders filled in."""
        for line in self.text().splitlines():
            if f"signal send {kind}" in line:
                command = line.strip()
                return command.replace("<one line>", summary).replace("<one sentence>", summary)
        return None

    def last_tool_results(self) -> tuple[ToolResult, ...]:
        for message in reversed(self.messages):
            if message.tool_results:
                return message.tool_results
            if message.role == "assistant":
                return ()
        return ()


# --- what the model does next ----------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One assistant turn. `kind`:
    - "write": create or replace `path` (relative to the agent's working directory) with `content`
    - "bash": run `command` in a shell
    - "report": run the report command found in the prompt (`summary` in its payload)
    - "text": end the turn with `text` (no tool call)
    - "hang": never answer (the connection stays open until the client or the test gives up)
    - "error": answer with HTTP `status` and `text` as the error message
    """

    kind: str
    path: str = ""
    content: str = ""
    command: str = ""
    text: str = ""
    status: int = 500
    summary: str = "done"


def write(path: str, content: str) -> Action:
    return Action("write", path=path, content=content)


def bash(command: str) -> Action:
    return Action("bash", command=command)


def report(summary: str = "done") -> Action:
    return Action("report", summary=summary)


def say(text: str) -> Action:
    return Action("text", text=text)


HANG = Action("hang")

Playbook = Callable[[Conversation], Action]


def resolve(action: Action, conv: Conversation) -> Action:
    """Turn "report" into the concrete "bash" command found in the prompt."""
    if action.kind != "report":
        return action
    command = conv.report_command(summary=action.summary.replace("'", ""))
    if command is None:
        return say("I cannot find a report command in my instructions.")
    return bash(command)


@dataclass
class NodePlaybook:
    """Steps per node (a node missing from `steps` uses `default`); each assistant turn takes the
    next step; past the end, the turn ends with `closing` text. A step may be a callable
    `(Conversation) -> Action` for answers that depend on what the agent saw."""

    steps: dict[str, Sequence[Action | Playbook]]
    default: Sequence[Action | Playbook] = ()
    closing: str = "Done."

    def __call__(self, conv: Conversation) -> Action:
        node = conv.node()
        steps = self.steps.get(node or "", self.default)
        index = conv.assistant_turns()
        if index >= len(steps):
            return say(self.closing)
        step = steps[index]
        action = step(conv) if callable(step) else step
        return resolve(action, conv)


def side_request(conv: Conversation) -> bool:
    """True for a request the CLI makes on its own (title, summary, topic detection, quota
    check): no attractor prompt in it. Those get a short text answer, not a playbook step."""
    return conv.node() is None


# --- the HTTP server -------------------------------------------------------------------------


class Exchange:
    """One HTTP request being answered: helpers for JSON and server-sent events."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        self.handler = handler
        self.body = body
        self.path = handler.path.split("?", 1)[0]
        self.headers = handler.headers

    def send_json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.handler.send_response(status)
        self.handler.send_header("Content-Type", "application/json")
        self.handler.send_header("Content-Length", str(len(data)))
        self.handler.end_headers()
        self.handler.wfile.write(data)

    def start_sse(self) -> None:
        self.handler.send_response(200)
        self.handler.send_header("Content-Type", "text/event-stream")
        self.handler.send_header("Cache-Control", "no-cache")
        self.handler.send_header("Connection", "close")
        self.handler.end_headers()
        self.handler.close_connection = True

    def sse(self, data: object, event: str | None = None) -> None:
        chunk = ""
        if event:
            chunk += f"event: {event}\n"
        chunk += f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
        self.handler.wfile.write(chunk.encode())
        self.handler.wfile.flush()


Route = Callable[["ModelServer", Exchange], None]


@dataclass(frozen=True)
class Recorded:
    path: str
    body: dict[str, Any]
    conversation: Conversation | None
    action: Action | None
    at: float = 0.0  # time.time() when the answer was decided


class ModelServer:
    """`with ModelServer(playbook) as server:` listens on 127.0.0.1 (`server.url`) until the
    block ends. `server.recorded` lists every request with the conversation and the action taken."""

    def __init__(self, playbook: Playbook, *, side_text: str = "Attractor agent session", port: int = 0) -> None:
        self.playbook = playbook
        self.port = port
        self.side_text = side_text
        self.recorded: list[Recorded] = []
        self.routes: dict[str, Route] = {}
        self.released = threading.Event()  # set at stop: hanging answers give up
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        from tests.modelserver import anthropic, chat, responses

        for module in (anthropic, responses, chat):
            self.routes.update(module.ROUTES)

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def next_action(self, conv: Conversation) -> Action:
        action = say(self.side_text) if side_request(conv) else self.playbook(conv)
        return action

    def record(self, exchange: Exchange, conv: Conversation | None, action: Action | None) -> None:
        with self._lock:
            self.recorded.append(Recorded(exchange.path, exchange.body, conv, action, time.time()))

    def conversations(self, node: str | None = None) -> list[Conversation]:
        with self._lock:
            items = [r.conversation for r in self.recorded if r.conversation is not None]
        return [c for c in items if node is None or c.node() == node]

    def hang(self) -> None:
        self.released.wait()

    def start(self) -> ModelServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                exchange = Exchange(self, body if isinstance(body, dict) else {})
                route = server.routes.get(f"{self.command} {exchange.path}")
                if route is None:
                    server.record(exchange, None, None)
                    exchange.send_json(404, {"error": {"type": "not_found", "message": exchange.path}})
                    return
                route(server, exchange)

            def do_POST(self) -> None:
                self._dispatch()

            def do_GET(self) -> None:
                self._dispatch()

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="model-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def steps_from_script(script: str, attempt: int = 1) -> list[Action]:
    """The neutral steps of a scripted-agent script (a node's `script` attribute): write/append
    become "write", run and commit become "bash", report becomes "report"; so a pipeline written
    for the scripted agent runs unchanged with a real CLI against this server."""
    from attractor.agents.scripted import parse_script, unescape

    actions: list[Action] = []
    contents: dict[str, str] = {}
    for step in parse_script(script):
        if not step.applies(attempt):
            continue
        head, _, rest = step.args.partition(" ")
        rest = unescape(rest)
        args = unescape(step.args)
        if step.verb == "write":
            contents[head] = rest
            actions.append(write(head, rest))
        elif step.verb == "append":
            contents[head] = contents.get(head, "") + rest
            actions.append(bash(f"printf '%s' {shell_quote(rest)} >> {shell_quote(head)}"))
        elif step.verb == "run":
            actions.append(bash(args))
        elif step.verb == "commit":
            actions.append(bash(f"git add -A && git commit -q -m {shell_quote(args or 'work')}"))
        elif step.verb == "report":
            actions.append(report(args or "done"))
        elif step.verb == "hang":
            actions.append(HANG)
    if not any(a.kind == "report" for a in actions):
        actions.append(report())
    return actions


def shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def script_playbook(scripts: dict[str, str], extra: dict[str, Sequence[Action | Playbook]] | None = None) -> Playbook:
    """A playbook that plays each node's scripted-agent script, per attempt (read from the
    prompt's `Attempt: N` line). `extra` overrides the steps of some nodes."""
    overrides = dict(extra or {})

    def play(conv: Conversation) -> Action:
        node = conv.node() or ""
        if node in overrides:
            return NodePlaybook({node: overrides[node]})(conv)
        script = scripts.get(node)
        if script is None:
            return say("No work for this node.")
        return NodePlaybook({node: steps_from_script(script, conv.attempt())})(conv)

    return play


def json_dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


__all__: Sequence[str] = (
    "HANG", "Action", "Conversation", "Exchange", "Message", "ModelServer", "NodePlaybook", "Playbook",
    "ToolCall", "ToolResult", "bash", "report", "resolve", "say", "script_playbook", "steps_from_script",
    "write",
)
