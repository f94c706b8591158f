# ruff: noqa: RUF001, RUF002
"""Recognise an agent blocked at a prompt from the text of its tmux pane.

The table `PROMPTS` is data: one `PromptRule` per known prompt, with a regular expression, the
policy action and, for ANSWER, the **option to choose, by its text** (e.g. "Yes, I trust this
folder"). Only the last `TAIL_LINES` non-blank lines of the pane are looked at, and when several
rules match, the one matching furthest down the pane (the most recent text) wins; on a tie, the
earlier rule in the table.

The answer is computed from the rendered menu, never a blind key: `read_menu` finds the options
of the menu at the bottom of the pane (numbered lines, the highlighted one marked `❯`, `›` or
`>`), `keys_to_choose` the arrow presses from the highlighted option to the wanted one, then
Enter. A prompt without a menu whose options are written `(Y)es/(N)o` is answered by typing the
option's letter and Enter. When the wanted option is not on the screen the match becomes
NEEDS_INPUT: a human decides.

Actions:
- ANSWER: choose `choose` in the pane (dialogs of agents we run on purpose, e.g. folder trust).
- NEEDS_INPUT: a question for a human (a permission prompt outside the allow list, generic
  y/n, credentials): the agent is shown as needs-input until answered (`attractor agent answer`).
- WAIT: leave the agent alone until `wait_until` (rate and usage limits). The reset time is read
  from the text when it says so (`|<epoch>`, `try again in 2h 5m`, `resets 3pm (Europe/Paris)`);
  otherwise `DEFAULT_LIMIT_WAIT` seconds from now.
- ESCALATE is the old name of NEEDS_INPUT and means the same.

The patterns follow the public, visible behaviour of Claude Code, Codex, Gemini CLI and Aider;
tools change their wording, so extend the table rather than the code.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

TAIL_LINES = 30
DEFAULT_LIMIT_WAIT = 300.0
# Seconds added after a parsed reset time, so the agent is not poked a moment too early.
RESET_MARGIN = 5.0
# A parsed reset further away than this is not believed; the default wait applies instead.
MAX_LIMIT_WAIT = 8 * 24 * 3600.0

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class PromptAction(enum.Enum):
    ANSWER = "answer"
    WAIT = "wait"
    NEEDS_INPUT = "needs_input"
    ESCALATE = "needs_input"  # an alias: the same member


@dataclass(frozen=True)
class PromptRule:
    name: str
    pattern: re.Pattern[str]
    action: PromptAction
    description: str
    choose: str = ""  # ANSWER: the option to choose, by the start of its text
    # For WAIT rules: reads a reset time (POSIX seconds) from the text after the match.
    parse_until: Callable[[str, float], float | None] | None = None


@dataclass(frozen=True)
class PromptMatch:
    rule: str
    action: PromptAction
    keys: tuple[str, ...]  # for ANSWER: the key presses that choose `choose` on this screen
    wait_until: float | None
    line: str
    reason: str
    choose: str = ""
    question: str = ""  # the lines above the menu (what is asked), for needs-input
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "action": self.action.value,
            "keys": list(self.keys),
            "choose": self.choose,
            "wait_until": self.wait_until,
            "line": self.line,
            "reason": self.reason,
            "question": self.question,
            "options": list(self.options),
        }


# --- menus -----------------------------------------------------------------------------------

MARKERS = "❯›>▶➤→"  # the highlight markers the CLIs draw
_BORDER = "│┃|╭╮╰╯─━"
_OPTION_RE = re.compile(rf"^\s*([{MARKERS}])?\s*(\d{{1,2}})[.)]\s+(\S.*?)\s*$")
_LETTER_RE = re.compile(r"\(([A-Za-z])\)([A-Za-z']*)")


@dataclass(frozen=True)
class MenuOption:
    number: int
    text: str
    highlighted: bool
    row: int


def _strip_border(line: str) -> str:
    return line.strip().strip(_BORDER).strip()


def read_menu(text: str) -> list[MenuOption]:
    """The options of the menu nearest the bottom of `text` (a pane's tail): consecutive
    numbered lines 1, 2, 3 …; [] when there is none."""
    rows = pane_tail(text).split("\n")
    found: list[MenuOption] = []
    for row, raw in enumerate(rows):
        match = _OPTION_RE.match(_strip_border(raw))
        if match is None:
            continue
        number = int(match.group(2))
        if number == 1:
            found = []
        elif not found or number != found[-1].number + 1:
            continue
        found.append(MenuOption(number, match.group(3).strip(), bool(match.group(1)), row))
    return found if len(found) >= 2 else []


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def find_option(options: Sequence[MenuOption], choose: str) -> MenuOption | None:
    """The option whose text is `choose`, else the first that starts with it."""
    want = _norm(choose)
    for option in options:
        if _norm(option.text) == want:
            return option
    for option in options:
        if _norm(option.text).startswith(want):
            return option
    return None


def keys_to_choose(text: str, choose: str) -> tuple[str, ...] | None:
    """The key presses that choose the option `choose` on this screen: arrows from the
    highlighted option, then Enter; for a `(Y)es/(N)o` prompt the option's letter and Enter.
    None when the option is not on the screen."""
    options = read_menu(text)
    if options:
        target = find_option(options, choose)
        if target is None:
            return None
        current = next((o for o in options if o.highlighted), options[0])
        steps = target.number - current.number
        arrow = "Down" if steps > 0 else "Up"
        return (*([arrow] * abs(steps)), "Enter")
    tail = pane_tail(text, 3)
    want = _norm(choose)
    for letter, rest in _LETTER_RE.findall(tail):
        if _norm(letter + rest).startswith(want) or want.startswith(_norm(letter + rest)):
            return (letter.lower(), "Enter")
    return None


def question_above(text: str) -> str:
    """The non-blank lines just above the menu (or the last lines): what the prompt asks."""
    rows = [_strip_border(r) for r in pane_tail(text).split("\n")]
    options = read_menu(text)
    end = options[0].row if options else len(rows)
    picked = [r for r in rows[max(0, end - 6):end] if r]
    return "\n".join(picked[-4:])


# --- reset-time parsing ---------------------------------------------------------------------

_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = r"(\d+(?:\.\d+)?)\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\b"
_DURATION_RE = re.compile(
    r"(?:try again|retry|retrying|resets?|available again|wait)\s+(?:in|after)\s+"
    rf"((?:{_DURATION_PART}[\s,]*(?:and\s+)?)+)",
    re.IGNORECASE,
)
_PART_RE = re.compile(_DURATION_PART, re.IGNORECASE)
_EPOCH_RE = re.compile(r"\|\s*(\d{10})\b")
_CLOCK_RE = re.compile(
    r"(?:resets?|try again|available again)\s+(?:at\s+|on\s+)?"
    r"(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\b(?:\s*\(([A-Za-z_]+(?:/[A-Za-z_+-]+)*)\))?",
    re.IGNORECASE,
)


def _duration_seconds(text: str) -> float:
    total = 0.0
    for number, unit in _PART_RE.findall(text):
        key = unit[0].lower()
        total += float(number) * _UNIT_SECONDS[key]
    return total


def _next_clock_time(hour: int, minute: int, zone: str | None, now: float) -> float | None:
    tzinfo = None
    if zone:
        try:
            from zoneinfo import ZoneInfo

            tzinfo = ZoneInfo(zone)
        except (ValueError, KeyError, OSError):
            tzinfo = None
    if tzinfo is not None:
        current = datetime.fromtimestamp(now, tzinfo)
    else:
        current = datetime.fromtimestamp(now).astimezone()
    try:
        candidate = current.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        return None
    if candidate.timestamp() <= now:
        candidate += timedelta(days=1)
    return candidate.timestamp()


def parse_reset_time(text: str, now: float) -> float | None:
    """The moment a usage or rate limit lifts, read from `text`, as POSIX seconds; None when the
    text does not say. Understands `|1767225600`, `try again in 1 hour 5 minutes`, `in 20s`,
    `resets 3pm (Europe/Berlin)`, `try again at 3:45 PM`."""
    epoch = _EPOCH_RE.search(text)
    if epoch:
        return float(epoch.group(1))
    duration = _DURATION_RE.search(text)
    if duration:
        seconds = _duration_seconds(duration.group(1))
        if seconds > 0:
            return now + seconds
    clock = _CLOCK_RE.search(text)
    if clock:
        hour = int(clock.group(1))
        minute = int(clock.group(2) or 0)
        meridiem = (clock.group(3) or "").lower()
        if not meridiem and clock.group(2) is None:
            return None  # a bare number is not a time
        if meridiem:
            if not 1 <= hour <= 12:
                return None
            hour = hour % 12 + (12 if meridiem == "pm" else 0)
        return _next_clock_time(hour, minute, clock.group(4), now)
    return None


# --- the table ------------------------------------------------------------------------------

def _rule(name: str, regex: str, action: PromptAction, description: str,
          choose: str = "", flags: int = re.IGNORECASE) -> PromptRule:
    parse = parse_reset_time if action is PromptAction.WAIT else None
    return PromptRule(name, re.compile(regex, flags | re.MULTILINE), action, description, choose, parse)


A = PromptAction
PROMPTS: tuple[PromptRule, ...] = (
    # Claude Code: first start in an untrusted folder. 2.1.x lists "No, exit" first, so the option
    # is chosen by its text (older versions: "Yes, proceed"). attractor pre-accepts the target root
    # in ~/.claude.json, so this shows only when that could not be written.
    _rule("claude-trust",
          r"Do you trust the files in this folder\?|Is this a project you created or one you trust"
          r"|Yes, I trust this folder|Quick safety check",
          A.ANSWER, "Claude Code folder trust dialog", "Yes, I trust this folder|Yes, proceed"),
    # Claude Code with --dangerously-skip-permissions asks once to accept.
    _rule("claude-bypass-accept",
          r"running in Bypass Permissions mode|Yes, I accept",
          A.ANSWER, "Claude Code bypass-permissions acknowledgement", "Yes, I accept"),
    # Claude Code tool permission for something outside the allow list: a human decides.
    _rule("claude-permission",
          r"Do you want to (?:proceed|make this edit|create|run|allow|overwrite|delete)[^\n?]*\?",
          A.NEEDS_INPUT, "Claude Code permission prompt"),
    # Codex CLI: folder trust (0.171: "Folder access … Trust this folder?").
    _rule("codex-trust",
          r"Trust this folder\?|Do you trust the contents of this directory\?|allow Codex to work in this folder",
          A.ANSWER, "Codex folder trust dialog", "Yes, continue|Trust and continue|Yes, trust|Yes"),
    # Codex CLI approvals: a human decides.
    _rule("codex-approval",
          r"^\s*Allow command\?|Would you like to (?:run the following command|make the following "
          r"edits|apply (?:these|the following) (?:changes|edits))\?",
          A.NEEDS_INPUT, "Codex approval prompt"),
    # Gemini CLI tool confirmation: "Allow execution of: ...?", "Apply this change?".
    _rule("gemini-confirm",
          r"Allow execution(?: of)?\b[^\n]*\?|Apply this change\?",
          A.NEEDS_INPUT, "Gemini CLI tool confirmation"),
    # Aider: "Add file to the chat? (Y)es/(N)o/(D)on't ask again [Yes]:" (with --yes-always it
    # does not ask; an older aider might).
    _rule("aider-confirm",
          r"\(Y\)es/\(N\)o[^\n]*\[(?:Yes|No)\]:\s*$",
          A.ANSWER, "Aider yes/no confirmation", "Yes", flags=0),
    # Usage limits of subscription CLIs.
    _rule("usage-limit",
          r"usage limit reached|You've hit your (?:usage )?limit|\d+-hour limit reached"
          r"|weekly limit reached|out of (?:extra )?usage|quota exceeded|RESOURCE_EXHAUSTED",
          A.WAIT, "usage or quota limit"),
    # API rate limits (HTTP 429 and the tools' wording of it). Requires words that only an error
    # uses, so code mentioning a rate limiter does not match.
    _rule("rate-limit",
          r"rate[ _-]?limit(?:ed\b| (?:reached|exceeded|hit)|_error)|\b429\b[^\n]*(?:too many"
          r"|rate)|Too Many Requests",
          A.WAIT, "API rate limit"),
    # Credentials: never typed by a control loop.
    _rule("credentials",
          r"Enter passphrase for|^\s*Username for '|^\s*Password for '|^\s*\[sudo\] password for"
          r"|^\s*Password:\s*$",
          A.NEEDS_INPUT, "credential prompt"),
    # Anything else asking yes/no at the end of a line.
    _rule("yes-no",
          r"(?:\((?:y/n|yes/no)\)|\[(?:y/n|yes/no)\])\s*[:?]?\s*$",
          A.NEEDS_INPUT, "generic yes/no question"),
)
del A


def pane_tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `text` after stripping ANSI escapes and trailing blank lines
    (capture-pane pads the screen with empty rows)."""
    cleaned = _ANSI_RE.sub("", text).replace("\r", "")
    rows = cleaned.split("\n")
    while rows and not rows[-1].strip():
        rows.pop()
    return "\n".join(rows[-lines:])


def match_prompt(text: str, now: float | None = None,
                 rules: Sequence[PromptRule] = PROMPTS) -> PromptMatch | None:
    """The prompt the pane shows at its bottom, or None. `now` (POSIX seconds) anchors WAIT
    times; default the current time."""
    tail = pane_tail(text)
    if not tail:
        return None
    best: tuple[int, int, PromptRule, re.Match[str]] | None = None
    for order, rule in enumerate(rules):
        last = None
        for found in rule.pattern.finditer(tail):
            last = found
        if last is None:
            continue
        key = (last.start(), -order)
        if best is None or key > (best[0], best[1]):
            best = (last.start(), -order, rule, last)
    if best is None:
        return None
    _, _, rule, found = best
    line_start = tail.rfind("\n", 0, found.start()) + 1
    line_end = tail.find("\n", found.end())
    line = tail[line_start: line_end if line_end >= 0 else len(tail)].strip()
    wait_until = None
    reason = f"{rule.description}: {line!r}"
    action = rule.action
    keys: tuple[str, ...] = ()
    chosen = ""
    if action is PromptAction.ANSWER:
        for choice in rule.choose.split("|"):
            found_keys = keys_to_choose(tail, choice) if choice else None
            if found_keys is not None:
                keys, chosen = found_keys, choice
                break
        if not keys:
            action = PromptAction.NEEDS_INPUT
            reason += f"; the option {rule.choose.split('|')[0]!r} is not on the screen, so a human decides"
    if rule.action is PromptAction.WAIT:
        import time

        anchor = time.time() if now is None else now
        parsed = rule.parse_until(tail[line_start:], anchor) if rule.parse_until else None
        if parsed is not None and anchor < parsed + RESET_MARGIN <= anchor + MAX_LIMIT_WAIT:
            wait_until = parsed + RESET_MARGIN
            reason += "; reset time read from the text"
        else:
            wait_until = anchor + DEFAULT_LIMIT_WAIT
            reason += f"; no reset time found, waiting {DEFAULT_LIMIT_WAIT:g}s"
    options = tuple(o.text for o in read_menu(tail))
    return PromptMatch(rule.name, action, keys, wait_until, line, reason, chosen, question_above(tail), options)
