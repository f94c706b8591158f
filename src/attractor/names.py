"""Name validation: one rule for every name that reaches a path, a command line or send-keys.

A name is `[a-z0-9][a-z0-9_.-]{0,63}`: no slash, no `..` at the start, no space, no quote, no
shell or tmux metacharacter. Agent ids are `<role>-<name>`.
"""

from __future__ import annotations

from attractor.errors import InvalidNameError, UnknownValueError

# The hot commands (cli/hot.py) validate names with this module, so it checks them without `re`:
# a name fits NAME_PATTERN when its first character is one of _FIRST and every other one of _REST.
NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
_REST = _FIRST + "_.-"
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
AGENT_ID_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,130}"


def _fits(value: object, limit: int) -> bool:
    """`value` is 1 to `limit` characters of the name alphabet, starting with a letter or digit."""
    return (isinstance(value, str) and 0 < len(value) <= limit and value[0] in _FIRST
            and not value.strip(_REST))


def validate_name(value: str, kind: str = "name") -> str:
    if not _fits(value, 64):
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
    if not _fits(value, 131):
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
    import importlib

    for module in _SHA256_MODULES:
        try:
            sha256 = importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
        return str(sha256(data).hexdigest())
    raise ImportError("no SHA-256 implementation (_sha256, _sha2 or hashlib)")
