"""The OpenAI Responses API wire format of the scripted model server (what Codex CLI speaks).

`POST /v1/responses` (and `/responses`, for a base URL given without `/v1`) takes a request
`{model, instructions?, input: [items], tools: [...], text?, stream}`. Codex 0.171 sends its
system prompt as `developer` messages, not `instructions`. Input items become the neutral
conversation:

- `message` (role user | developer | system | assistant; content parts `input_text` /
  `output_text`): a message; developer and system text joins `system`;
- `function_call {name, arguments: "<json>", call_id}` and `custom_tool_call {name, input,
  call_id}`: an assistant tool call (consecutive calls form one assistant turn);
- `function_call_output` / `custom_tool_call_output {call_id, output}`: its result (`output` is
  a string or a list of `{type: input_text, text}` parts);
- `additional_tools {tools: [...]}`: more tools offered (namespaces flattened), how Codex offers
  the tools of code-mode models;
- `reasoning` and anything else: ignored.

The answer is a server-sent event stream (or one JSON body when `stream` is false):
`response.created`, then per output item `response.output_item.added`, for text
`response.output_text.delta`/`.done`, `response.output_item.done` (Codex takes the item from
here), and `response.completed` with `usage {input_tokens (cached included),
input_tokens_details.cached_tokens, output_tokens, output_tokens_details.reasoning_tokens,
total_tokens}` (`INPUT_TOKENS`, `CACHED_TOKENS`, `OUTPUT_TOKENS` per answer).

Neutral actions map onto the tools the request offers: "bash" calls the shell tool
(`exec_command {cmd}` / `shell_command {command: str}` / `shell {command: [argv]}`; for a
code-mode model, whose only tool is the JavaScript `exec`, an `exec` call running
`tools.exec_command`); "write" is a shell heredoc through the same tool (apply_patch would need
a patch grammar; the shell runs without approval wherever a write would); "text" is an assistant
message that ends the turn; "hang" never answers; "error" answers with the HTTP status.

A request asking for structured output (`text.format.type == "json_schema"`: Codex's thread
title, which carries the user prompt) is a side request: it gets JSON fitting the schema and
never takes a playbook step.

`GET /v1/models` answers with a one-model list (not called by 0.171 with a custom provider).
"""

from __future__ import annotations

import itertools
import json
import shlex
from typing import Any

from tests.modelserver import core

_ids = itertools.count(1)
# Tokens reported per answer; the cached share lets tests check cache accounting end to end.
INPUT_TOKENS = 1000
CACHED_TOKENS = 200
OUTPUT_TOKENS = 50

SHELL_TOOLS = ("exec_command", "shell_command", "shell", "local_shell")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return ""


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        loaded = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {"raw": raw}
    return loaded if isinstance(loaded, dict) else {"raw": loaded}


def _tool_names(tools: Any) -> list[str]:
    """Names of the tools offered, namespaces flattened (`functions` tools keep their bare name)."""
    names: list[str] = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "namespace":
            names.extend(_tool_names(tool.get("tools")))
            continue
        names.append(str(tool.get("name") or (tool.get("function") or {}).get("name") or tool.get("type") or ""))
    return names


def conversation(body: dict[str, Any]) -> core.Conversation:
    system_parts = [str(body.get("instructions") or "")]
    messages: list[core.Message] = []
    extra_tools: list[str] = []
    items = body.get("input") or []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type") or ("message" if "role" in item else "")
        if kind == "additional_tools":  # tools announced in the input (namespaced, code mode)
            extra_tools.extend(_tool_names(item.get("tools")))
        elif kind == "message":
            role = str(item.get("role") or "user")
            text = _text_of(item.get("content"))
            if role in ("developer", "system"):
                system_parts.append(text)
            else:
                messages.append(core.Message(role="assistant" if role == "assistant" else "user", text=text))
        elif kind in ("function_call", "custom_tool_call", "local_shell_call"):
            args = _arguments(item.get("arguments")) if kind == "function_call" else \
                {"input": item.get("input")} if kind == "custom_tool_call" else dict(item.get("action") or {})
            call = core.ToolCall(str(item.get("name") or kind), args, str(item.get("call_id") or ""))
            # consecutive calls of one turn form one assistant message
            if messages and messages[-1].role == "assistant" and messages[-1].tool_calls and not messages[-1].text:
                last = messages.pop()
                messages.append(core.Message("assistant", tool_calls=(*last.tool_calls, call)))
            else:
                messages.append(core.Message("assistant", tool_calls=(call,)))
        elif kind in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
            output = item.get("output")
            text = _text_of(output) if not isinstance(output, dict) else str(output.get("content") or "")
            result = core.ToolResult(str(item.get("call_id") or ""), text)
            if messages and messages[-1].role == "tool":
                last = messages.pop()
                messages.append(core.Message("tool", tool_results=(*last.tool_results, result)))
            else:
                messages.append(core.Message("tool", tool_results=(result,)))
    tools = tuple(_tool_names(body.get("tools")) + extra_tools)
    return core.Conversation(api="responses", model=str(body.get("model") or ""),
                             system="\n".join(p for p in system_parts if p), messages=tuple(messages),
                             tools=tools, stream=bool(body.get("stream")), raw=body)


def _heredoc(path: str, content: str) -> str:
    marker = "ATTRACTOR_EOF"
    while marker in content:
        marker += "_"
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    mkdir = f"mkdir -p {shlex.quote(parent)} && " if parent else ""
    if not content.endswith("\n"):  # a heredoc always ends in a newline
        return f"{mkdir}printf '%s' {shlex.quote(content)} > {shlex.quote(path)}"
    return f"{mkdir}cat > {shlex.quote(path)} <<'{marker}'\n{content}{marker}"


def shell_call(conv: core.Conversation, command: str, call_id: str) -> dict[str, Any]:
    """A function_call item running `command` through the shell tool the request offers; in code
    mode (only the JavaScript `exec` tool is offered), an `exec` call that runs it through
    `tools.exec_command` and returns its output."""
    direct = {name for name in _tool_names(conv.raw.get("tools"))}
    offered = [name for name in SHELL_TOOLS if name in direct]
    if not offered and "exec" in conv.tools:
        script = (f"const result = await tools.exec_command({json.dumps({'cmd': command, 'yield_time_ms': 10000})});\n"
                  "text(result);\n")
        return {"type": "custom_tool_call", "id": f"ctc_{call_id}", "call_id": call_id, "name": "exec",
                "input": script, "status": "completed"}
    offered = offered or [name for name in SHELL_TOOLS if name in conv.tools]
    name = offered[0] if offered else "shell"
    if name == "exec_command":
        args: dict[str, Any] = {"cmd": command, "yield_time_ms": 10000}
    elif name == "shell_command":
        args = {"command": command, "timeout_ms": 60000}
    else:
        args = {"command": ["bash", "-lc", command], "timeout_ms": 60000}
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": name,
            "arguments": json.dumps(args), "status": "completed"}


def output_items(conv: core.Conversation, action: core.Action) -> list[dict[str, Any]]:
    number = next(_ids)
    if action.kind == "bash":
        return [shell_call(conv, action.command, f"call_{number}")]
    if action.kind == "write":
        return [shell_call(conv, _heredoc(action.path, action.content), f"call_{number}")]
    text = action.text or "Done."
    return [{"type": "message", "id": f"msg_{number}", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": text, "annotations": []}]}]


def _usage() -> dict[str, Any]:
    return {"input_tokens": INPUT_TOKENS, "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
            "output_tokens": OUTPUT_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS}


def structured_answer(body: dict[str, Any]) -> str | None:
    """For a request that asks for JSON output (`text.format.type == json_schema`: Codex's thread
    title), a JSON object that fits the schema's required string fields; None otherwise."""
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("schema") or {}
    answer: dict[str, Any] = {}
    for name, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "string":
            limit = int(spec.get("maxLength") or 36)
            answer[name] = "Attractor agent session"[:limit]
        elif kind in ("integer", "number"):
            answer[name] = 0
        elif kind == "boolean":
            answer[name] = False
        elif kind == "array":
            answer[name] = []
    return json.dumps(answer)


def handle_responses(server: core.ModelServer, exchange: core.Exchange) -> None:
    conv = conversation(exchange.body)
    structured = structured_answer(exchange.body)
    # a side request (thread title): a short answer, never a playbook step
    action = core.say(structured) if structured is not None else server.next_action(conv)
    server.record(exchange, conv, action)
    if action.kind == "hang":
        server.hang()
        return
    if action.kind == "error":
        exchange.send_json(action.status, {"error": {"type": "server_error", "code": "server_error",
                                                     "message": action.text or "scripted error"}})
        return
    response_id = f"resp_{next(_ids)}"
    items = output_items(conv, action)
    base = {"id": response_id, "object": "response", "model": conv.model, "status": "in_progress",
            "output": []}
    if not conv.stream:
        exchange.send_json(200, {**base, "status": "completed", "output": items, "usage": _usage()})
        return
    exchange.start_sse()
    sequence = itertools.count()
    exchange.sse({"type": "response.created", "sequence_number": next(sequence), "response": base},
                 "response.created")
    for index, item in enumerate(items):
        start = {**item, "status": "in_progress"}
        if item["type"] == "message":
            start["content"] = []
        exchange.sse({"type": "response.output_item.added", "sequence_number": next(sequence),
                      "output_index": index, "item": start}, "response.output_item.added")
        if item["type"] == "message":
            text = item["content"][0]["text"]
            exchange.sse({"type": "response.output_text.delta", "sequence_number": next(sequence),
                          "item_id": item["id"], "output_index": index, "content_index": 0, "delta": text},
                         "response.output_text.delta")
            exchange.sse({"type": "response.output_text.done", "sequence_number": next(sequence),
                          "item_id": item["id"], "output_index": index, "content_index": 0, "text": text},
                         "response.output_text.done")
        exchange.sse({"type": "response.output_item.done", "sequence_number": next(sequence),
                      "output_index": index, "item": item}, "response.output_item.done")
    done = {**base, "status": "completed", "output": items, "usage": _usage()}
    exchange.sse({"type": "response.completed", "sequence_number": next(sequence), "response": done},
                 "response.completed")


def handle_models(server: core.ModelServer, exchange: core.Exchange) -> None:
    server.record(exchange, None, None)
    model = "gpt-5-codex"
    exchange.send_json(200, {"object": "list", "data": [
        {"id": model, "object": "model", "created": 1700000000, "owned_by": "attractor-tests"}]})


ROUTES: dict[str, Any] = {
    "POST /v1/responses": handle_responses,
    "POST /responses": handle_responses,
    "GET /v1/models": handle_models,
    "GET /models": handle_models,
}
