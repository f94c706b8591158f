"""Name validation: one rule for every name that reaches a path, a command line or send-keys.

A name is `[a-z0-9][a-z0-9_.-]{0,63}`: no slash, no `..` at the start, no space, no quote, no
shell or tmux metacharacter. Agent ids are `<role>-<name>`.
"""

from __future__ import annotations

import importlib
import re

from attractor.errors import InvalidNameError, UnknownValueError

NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = (
    "use 1-64 characters from a-z 0-9 _ . - starting with a letter or digit "
    "(no slash, space, quote or uppercase)"
)

# The environment variables attractor sets for the processes it starts (agents and layers) and
# reads back in the commands those processes call.
ENV_STATE_DIR = "ATTRACTOR_STATE_DIR"
ENV_TMUX_SOCKET = "ATTRACTOR_TMUX_SOCKET"
ENV_AGENT_ID = "ATTRACTOR_AGENT_ID"
ENV_RUNNER_ID = "ATTRACTOR_RUNNER_ID"
ENV_NODE = "ATTRACTOR_NODE"
ENV_RUN_ID = "ATTRACTOR_RUN_ID"
ENV_TARGET_BRANCH = "ATTRACTOR_TARGET_BRANCH"
ENV_AGENT_EPOCH = "ATTRACTOR_AGENT_EPOCH"
ENV_LOG_LEVEL = "ATTRACTOR_LOG_LEVEL"
ENV_MODEL = "ATTRACTOR_MODEL"

ROLES = ("launcher", "guardian", "runner", "orchestrator", "merge-queue", "user")
# Agent ids: role + '-' + name. Roles may themselves contain '-' (merge-queue).
_AGENT_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,130}")


def validate_name(value: str, kind: str = "name") -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidNameError(kind, str(value), NAME_RULE)
    return value


def validate_role(value: str) -> str:
    if value not in ROLES:
        raise UnknownValueError("role", value, ROLES)
    return value


def agent_id(role: str, name: str) -> str:
    return f"{validate_role(role)}-{validate_name(name)}"


def validate_agent_id(value: str) -> str:
    """An agent id is `<role>-<name>` or any other valid name (an inbox of a custom agent)."""
    if not isinstance(value, str) or not _AGENT_ID_RE.fullmatch(value):
        raise InvalidNameError("agent id", str(value), NAME_RULE)
    return value


def split_agent_id(value: str) -> tuple[str, str]:
    """Split `runner-impl_auth` into (`runner`, `impl_auth`); raises if no known role prefix."""
    validate_agent_id(value)
    for role in sorted(ROLES, key=len, reverse=True):
        prefix = role + "-"
        if value.startswith(prefix) and len(value) > len(prefix):
            return role, validate_name(value[len(prefix):])
    raise InvalidNameError("agent id", value, f"expected <role>-<name> with role in {ROLES}")


# CPython's own SHA-256 first: hashlib (and hmac, and so secrets) load OpenSSL, 3.6 MB of every
# long-lived process that only needs a digest now and then. The first module found is kept.
_SHA256_MODULES = ("_sha256", "_sha2", "hashlib")  # CPython 3.11, CPython 3.12+, anything else


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of `data`, in hex (the same digest whichever implementation computes it)."""
    for module in _SHA256_MODULES:
        try:
            sha256 = importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
        return str(sha256(data).hexdigest())
    raise ImportError("no SHA-256 implementation (_sha256, _sha2 or hashlib)")
