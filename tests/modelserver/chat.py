"""The OpenAI chat-completions wire format of the scripted model server (what Aider speaks
through litellm when pointed at an OpenAI-compatible base URL).

Routes: `POST /v1/chat/completions` (and `/chat/completions`, for a base URL given without
`/v1`), `GET /v1/models` (and `/models`). Streaming answers are server-sent `data: {chunk}` lines
ended by `data: [DONE]`, with a last chunk holding only `usage` when the request asks for it
(`stream_options.include_usage`); otherwise one `chat.completion` JSON object.

How a playbook maps onto a CLI without tools. Aider offers the model no tools: it applies the
edits written in the assistant's text, commits them itself, and the runner reports for it. So one
assistant message here carries every step of the node's playbook from where the last one stopped:
each "write" becomes a *file listing* (Aider's `whole` edit format: the path on a line of its own,
then the whole content between the fences the system prompt names), "bash" and "report" steps are
skipped, a "text" step (the playbook's closing) ends the message with its text, and "hang" or
"error" as the first step of a message is acted on as such (later in a message it ends the message
before it, so the next request meets it). The steps are read from the playbook by asking it with
a conversation that holds the request's user messages and as many placeholder assistant turns as
the step wanted (Aider's requests also hold its own few-shot example and "Ok." acknowledgements,
which must not count as turns). Each message ends with a marker line naming the next step, so a
later request of the same session (Aider asks again after adding files to the chat, or after a
lint error) carries on from there: the server stays stateless.

Side requests: Aider's commit-message request (its system prompt asks for "one-line Git commit
messages", the user message starts with `# Diffs:`) is answered with a one-line conventional
commit message built from the file names in the diff; its history summarisation request with the
server's `side_text`. Both carry attractor's prompt in their context, so they are recognised here
before the playbook is asked.

Token usage is made up but stable: a quarter of the characters sent and received.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from tests.modelserver.core import Action, Conversation, Exchange, Message, say

if TYPE_CHECKING:
    from tests.modelserver.core import ModelServer

# Most steps one answer will gather (a playbook whose steps never end must not spin forever).
MAX_STEPS = 200
MARKER = "(scripted model: next step {step})"
_MARKER_RE = re.compile(r"^\(scripted model: next step (\d+)\)$", re.MULTILINE)
_DEFAULT_FENCE = ("```", "```")
# Aider's whole-format system prompt shows the listing format with this example path.
_FENCE_RE = re.compile(r"^path/to/filename\.js\n(\S+)\n.*?\n(\S+)$", re.MULTILINE | re.DOTALL)
_COMMIT_SYSTEM_RE = re.compile(r"one-line Git commit messages?", re.IGNORECASE)
_SUMMARY_RE = re.compile(r"\*Briefly\* summarize this partial conversation", re.IGNORECASE)


def content_text(content: object) -> str:
    """A message's content as text: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text") or "") for part in content
                       if isinstance(part, dict) and part.get("type") in (None, "text"))
    return ""


def parse(body: dict[str, Any]) -> Conversation:
    system: list[str] = []
    messages: list[Message] = []
    for item in body.get("messages") or []:
        if not isinstance(item, dict):
            continue
        role = str(item.get("role") or "")
        text = content_text(item.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant", "tool"):
            messages.append(Message(role, text))
    tools = tuple(str((tool.get("function") or {}).get("name") or "") for tool in body.get("tools") or []
                  if isinstance(tool, dict))
    return Conversation(api="chat", model=str(body.get("model") or ""), system="\n\n".join(system),
                        messages=tuple(messages), tools=tools, stream=bool(body.get("stream")), raw=body)


def is_commit_message_request(conv: Conversation) -> bool:
    last_user = next((m.text for m in reversed(conv.messages) if m.role == "user"), "")
    return bool(_COMMIT_SYSTEM_RE.search(conv.system)) or "# Diffs:" in last_user


def is_summary_request(conv: Conversation) -> bool:
    return bool(_SUMMARY_RE.search(conv.text()))


def commit_message(diffs: str) -> str:
    """A one-line message for the files a diff names: `feat: add a.py, b.py`."""
    added = re.findall(r"^Added (\S+)$", diffs, re.MULTILINE)
    names = list(added)
    for block in re.split(r"^(?=diff --git )", diffs, flags=re.MULTILINE):
        header = re.match(r"diff --git a/\S+ b/(\S+)", block)
        if header is None:
            continue
        names.append(header.group(1))
        if "\nnew file mode" in block or "\n--- /dev/null" in block:
            added.append(header.group(1))
    names = list(dict.fromkeys(names))
    verb = "add" if names and all(name in added for name in names) else "update"
    message = f"feat: {verb} {', '.join(names) or 'files'}"
    return message if len(message) <= 72 else f"feat: {verb} {names[0]} and {len(names) - 1} more files"


def fence(conv: Conversation) -> tuple[str, str]:
    """The fences Aider told the model to use (it picks others when a file holds ```)."""
    found = _FENCE_RE.search(conv.system)
    return (found.group(1), found.group(2)) if found else _DEFAULT_FENCE


def next_step(conv: Conversation) -> int:
    """Where this session stands: the step named by the last marker of our own answers."""
    for message in reversed(conv.messages):
        if message.role == "assistant":
            found = _MARKER_RE.findall(message.text)
            if found:
                return int(found[-1])
    return 0


def step_action(server: ModelServer, conv: Conversation, step: int) -> Action:
    """The playbook's action at `step`, asked with a conversation of `step` assistant turns."""
    users = tuple(m for m in conv.messages if m.role != "assistant")
    turns = tuple(Message("assistant", f"(step {i})") for i in range(step))
    probe = Conversation(conv.api, conv.model, conv.system, users + turns, conv.tools, conv.stream, conv.raw)
    return server.next_action(probe)


def file_listing(path: str, content: str, fences: tuple[str, str]) -> str:
    body = content if content.endswith("\n") or not content else content + "\n"
    return f"{path}\n{fences[0]}\n{body}{fences[1]}\n"


def plan_answer(server: ModelServer, conv: Conversation) -> tuple[Action, str]:
    """The first action taken at this request (for the record) and the text to answer with;
    a "hang" or "error" action comes back with empty text."""
    if is_commit_message_request(conv):
        last_user = next((m.text for m in reversed(conv.messages) if m.role == "user"), "")
        text = commit_message(last_user)
        return say(text), text
    if is_summary_request(conv):
        return say(server.side_text), server.side_text
    start = next_step(conv)
    fences = fence(conv)
    parts: list[str] = []
    first: Action | None = None
    step = start
    while step < start + MAX_STEPS:
        action = step_action(server, conv, step)
        if action.kind in ("hang", "error"):
            if first is None:
                return action, ""
            break
        first = first or action
        step += 1
        if action.kind == "write":
            parts.append(file_listing(action.path, action.content, fences))
        elif action.kind == "text":
            parts.append(action.text + "\n")
            break
    if first is None:
        first = say("")
    parts.append(MARKER.format(step=step) + "\n")
    return first, "\n".join(parts)


def usage(conv: Conversation, text: str) -> dict[str, int]:
    sent = max(1, len(json.dumps(conv.raw.get("messages") or [])) // 4)
    received = max(1, len(text) // 4)
    return {"prompt_tokens": sent, "completion_tokens": received, "total_tokens": sent + received}


def handle_completion(server: ModelServer, exchange: Exchange) -> None:
    conv = parse(exchange.body)
    action, text = plan_answer(server, conv)
    server.record(exchange, conv, action)
    if action.kind == "hang":
        server.hang()
        exchange.send_json(503, {"error": {"type": "server_error", "message": "released"}})
        return
    if action.kind == "error":
        exchange.send_json(action.status, {"error": {"type": "server_error", "message": action.text,
                                                     "code": str(action.status)}})
        return
    ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    model = conv.model or "scripted"
    counts = usage(conv, text)
    if not conv.stream:
        exchange.send_json(200, {
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": counts,
        })
        return

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    exchange.start_sse()
    exchange.sse(chunk({"role": "assistant", "content": ""}, None))
    for line in text.splitlines(keepends=True):
        exchange.sse(chunk({"content": line}, None))
    exchange.sse(chunk({}, "stop"))
    options = exchange.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        exchange.sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                      "choices": [], "usage": counts})
    exchange.sse("[DONE]")


def handle_models(server: ModelServer, exchange: Exchange) -> None:
    server.record(exchange, None, None)
    exchange.send_json(200, {"object": "list", "data": [
        {"id": "scripted", "object": "model", "created": 0, "owned_by": "attractor-tests"}]})


ROUTES: dict[str, Any] = {
    "POST /v1/chat/completions": handle_completion,
    "POST /chat/completions": handle_completion,
    "GET /v1/models": handle_models,
    "GET /models": handle_models,
}
