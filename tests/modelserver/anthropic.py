"""The Anthropic Messages API wire format of the scripted model server (what Claude Code speaks).

`POST /v1/messages` turns the request into a neutral `Conversation` (system text, messages with
`tool_use` blocks as `ToolCall` and `tool_result` blocks as `ToolResult`, the names of the tools
offered, the stream flag), asks the server for the next `Action` and answers as the API does:
server-sent events when the request says `"stream": true` (message_start with usage,
content_block_start/delta/stop per block, message_delta with the stop reason and the output
usage, message_stop), one JSON message otherwise.

Neutral actions become Claude Code's own tools: "write" is `Write {file_path, content}` with the
path made absolute against the working directory Claude Code states in its system prompt
(`Primary working directory: /abs/path` in its environment block), "bash" is
`Bash {command, description}`, each preceded by a text block when the action has `text`. "text"
ends the turn, "hang" keeps the connection open until the server stops, "error" answers with the
API's error body and the given HTTP status.

`POST /v1/messages/count_tokens` answers a rough count (four characters a token), which is all
the CLI uses it for.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from tests.modelserver.core import Action, Conversation, Exchange, Message, ToolCall, ToolResult

if TYPE_CHECKING:
    from tests.modelserver.core import ModelServer

# How Claude Code states its working directory (2.1.x: "Primary working directory: ...";
# older releases: "Working directory: ...").
_CWD_RE = re.compile(r"^\s*(?:-\s*)?(?:Primary working directory|Working directory):\s*(/\S[^\n]*?)\s*$", re.MULTILINE)

# Usage figures the server reports: fixed numbers so tests can check the sums Claude Code records.
CACHE_READ_TOKENS = 1000
CACHE_WRITE_TOKENS = 200
OUTPUT_TOKENS_PER_BLOCK = 25

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(block.get("text", "")) for block in content
                         if isinstance(block, dict) and block.get("type") == "text")
    return ""


def _messages(raw: list[Any]) -> tuple[Message, ...]:
    out: list[Message] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        role = str(item.get("role", "user"))
        content = item.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        texts: list[str] = []
        calls: list[ToolCall] = []
        results: list[ToolResult] = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                arguments = block.get("input")
                calls.append(ToolCall(str(block.get("name", "")), arguments if isinstance(arguments, dict) else {},
                                      str(block.get("id", ""))))
            elif kind == "tool_result":
                results.append(ToolResult(str(block.get("tool_use_id", "")), _text_of(block.get("content")),
                                          bool(block.get("is_error", False))))
        out.append(Message(role, "\n".join(t for t in texts if t), tuple(calls), tuple(results)))
    return tuple(out)


def conversation(body: dict[str, Any]) -> Conversation:
    tools = body.get("tools") or []
    return Conversation(
        api="anthropic",
        model=str(body.get("model", "")),
        system=_text_of(body.get("system")),
        messages=_messages(body.get("messages") or []),
        tools=tuple(str(t.get("name", "")) for t in tools if isinstance(t, dict)),
        stream=bool(body.get("stream", False)),
        raw=body,
    )


def working_directory(conv: Conversation) -> str | None:
    """The directory Claude Code says it works in (system prompt, or a reminder in a user turn)."""
    found = _CWD_RE.search(conv.text())
    return found.group(1) if found else None


def _blocks(action: Action, conv: Conversation) -> tuple[list[dict[str, Any]], str]:
    """The content blocks of the answer and its stop reason. A tool call whose action carries
    `text` is preceded by that text block (as models say what they are about to do)."""
    if action.kind in ("write", "bash") and action.text:
        blocks, stop = _blocks(Action(action.kind, path=action.path, content=action.content,
                                      command=action.command), conv)
        return [{"type": "text", "text": action.text}, *blocks], stop
    if action.kind == "write":
        path = action.path
        if not PurePosixPath(path).is_absolute():
            cwd = working_directory(conv)
            if cwd is None:
                return [{"type": "text", "text": f"I cannot tell my working directory to write {path}."}], "end_turn"
            path = str(PurePosixPath(cwd) / path)
        return [{"type": "tool_use", "id": _id("toolu"), "name": "Write",
                 "input": {"file_path": path, "content": action.content}}], "tool_use"
    if action.kind == "bash":
        return [{"type": "tool_use", "id": _id("toolu"), "name": "Bash",
                 "input": {"command": action.command, "description": "Run a step of the playbook"}}], "tool_use"
    return [{"type": "text", "text": action.text or "Done."}], "end_turn"


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _usage(body: dict[str, Any], output_tokens: int) -> dict[str, int]:
    size = len(json.dumps(body.get("messages") or [])) + len(json.dumps(body.get("system") or ""))
    return {"input_tokens": max(1, size // 40), "output_tokens": output_tokens,
            "cache_creation_input_tokens": CACHE_WRITE_TOKENS, "cache_read_input_tokens": CACHE_READ_TOKENS}


def _send_error(exchange: Exchange, status: int, message: str) -> None:
    kind = _ERROR_TYPES.get(status, "api_error")
    exchange.send_json(status, {"type": "error", "error": {"type": kind, "message": message}})


def _stream(exchange: Exchange, message: dict[str, Any]) -> None:
    usage = dict(message["usage"])
    start = dict(message, content=[], stop_reason=None, stop_sequence=None, usage=dict(usage, output_tokens=1))
    exchange.start_sse()
    exchange.sse({"type": "message_start", "message": start}, "message_start")
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            exchange.sse({"type": "content_block_start", "index": index,
                          "content_block": dict(block, input={})}, "content_block_start")
            exchange.sse({"type": "content_block_delta", "index": index,
                          "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}},
                         "content_block_delta")
        else:
            exchange.sse({"type": "content_block_start", "index": index,
                          "content_block": {"type": "text", "text": ""}}, "content_block_start")
            exchange.sse({"type": "content_block_delta", "index": index,
                          "delta": {"type": "text_delta", "text": block["text"]}}, "content_block_delta")
        exchange.sse({"type": "content_block_stop", "index": index}, "content_block_stop")
    exchange.sse({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                  "usage": {"output_tokens": usage["output_tokens"]}}, "message_delta")
    exchange.sse({"type": "message_stop"}, "message_stop")


def messages(server: ModelServer, exchange: Exchange) -> None:
    conv = conversation(exchange.body)
    action = server.next_action(conv)
    server.record(exchange, conv, action)
    if action.kind == "hang":
        server.hang()
        exchange.handler.close_connection = True
        return
    if action.kind == "error":
        _send_error(exchange, action.status, action.text or "scripted error")
        return
    content, stop_reason = _blocks(action, conv)
    message = {"id": _id("msg"), "type": "message", "role": "assistant", "model": conv.model or "claude-scripted",
               "content": content, "stop_reason": stop_reason, "stop_sequence": None,
               "usage": _usage(exchange.body, OUTPUT_TOKENS_PER_BLOCK * len(content))}
    if conv.stream:
        _stream(exchange, message)
    else:
        exchange.send_json(200, message)


def count_tokens(server: ModelServer, exchange: Exchange) -> None:
    server.record(exchange, None, None)
    size = len(json.dumps(exchange.body.get("messages") or [])) + len(json.dumps(exchange.body.get("system") or ""))
    exchange.send_json(200, {"input_tokens": max(1, size // 4)})


ROUTES = {
    "POST /v1/messages": messages,
    "POST /v1/messages/count_tokens": count_tokens,
}
