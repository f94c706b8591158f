"""Supervision policy: when a dead agent may be respawned, when it is quarantined, when all
respawns pause; and detection: is an agent starting, alive, dead, stale, hung or blocked.

Files (under the state directory, atomic replace, lock `<file>.lock` beside each):

`supervision/<agent-id>.json` — one per agent that has died at least once:
    schema               1
    agent_id             `<role>-<name>`
    deaths               [{at: ISO, cause: str, exit_code: int | null, key: str | null}],
                         oldest first; only the last `MAX_DEATHS_KEPT` are kept. `key` names
                         the death (the incarnation that died: `<epoch>:<pid>:<pid start>`); a
                         death whose key is already here is the same death seen again and is
                         not counted twice
    consecutive_deaths   deaths since the agent was last healthy for `reset_after` seconds;
                         drives the backoff (1st death: respawn now, 2nd: base, 3rd: base*factor…)
    restarts             respawns performed (`record_respawn`), never reset except by clear
    awaiting_respawn     a death was recorded and no respawn since
    next_restart_at      ISO | null: earliest respawn allowed by the backoff
    quarantined          bool; `quarantine_reason` str; `quarantined_at` ISO | null
    healthy_since        ISO | null: first healthy tick since the last respawn
    updated_at           ISO

`supervision/escalation.json` — the cross-agent view:
    schema      1
    recent      [{agent_id, at}] deaths within `escalation_window`, for counting distinct agents
    active      null, or {started_at, until, agents: [..], reason}: all respawns paused
    alerts      the last `MAX_ALERTS` escalations, {started_at, until, agents, reason,
                cleared_at}; exactly one per escalation

`supervision/startup.json` — measured start-up times, per layer (role):
    schema      1
    layers      {role: [{agent_id, epoch, seconds, at}]}: spawn -> first heartbeat of each
                incarnation, newest last, the last `STARTUP_SAMPLES_KEPT` per role. The start-up
                grace of a role is `startup_factor` x the `startup_percentile` of its samples,
                within [`startup_floor`, `startup_ceiling`] (the floor while there are none)

Staleness: a death older than `quarantine_window` no longer counts toward quarantine; the backoff
level resets once the agent has been healthy for `reset_after` seconds; an escalation ends at its
`until` (start + `escalation_cooldown`) or when cleared. A file that does not parse, or lacks,
adds or mistypes a field (store/records.py), is moved aside (`*.corrupt-<stamp>`), reported in
`Supervisor.problems` and the log, and the policy starts fresh for that agent: supervision never
crashes the loop that calls it.

Detection (`classify`) is a pure function over an `AgentObservation` the caller builds from one
batched `tmux list-panes -a` query and the identity records.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from attractor.clock import SYSTEM_CLOCK, Clock, iso, parse_iso
from attractor.engines.prompts import PROMPTS, PromptMatch, PromptRule, match_prompt
from attractor.errors import AttractorError, CorruptStateError, InvalidNameError, NotFoundError
from attractor.names import split_agent_id, validate_agent_id
from attractor.states import IdentityStatus
from attractor.store import records
from attractor.store.atomic import ensure_private_dir, write_json_atomic
from attractor.store.identities import CONTROL_HEARTBEAT_INTERVAL, HEARTBEAT_INTERVALS
from attractor.store.locks import file_lock
from attractor.store.statedir import StateDir

logger = logging.getLogger(__name__)

SCHEMA = 1
SUBDIR = "supervision"
ESCALATION_FILE = "escalation.json"
MAX_DEATHS_KEPT = 50
MAX_ALERTS = 20
STARTUP_FILE = "startup.json"
STARTUP_SAMPLES_KEPT = 50
# An agent exits with this code to say "do not respawn me" (sysexits EX_CONFIG).
EXIT_DO_NOT_RETRY = 78
CONTROL_ROLES = frozenset({"launcher", "guardian", "runner", "merge-queue"})
R = TypeVar("R", bound=records.Record)
# Stored times have microseconds: a caller waking at exactly `Decision.at` is on time.
TIME_RESOLUTION = 1e-6


@dataclass(frozen=True)
class PolicyConfig:
    base_delay: float = 1.0
    factor: float = 2.0
    jitter: float = 0.2
    max_delay: float = 60.0
    reset_after: float = 60.0
    quarantine_deaths: int = 5
    quarantine_window: float = 600.0
    do_not_retry_exit_codes: frozenset[int] = frozenset({2, EXIT_DO_NOT_RETRY})
    startup_grace: float = 5.0
    # Inside the grace period an agent is DEAD only if its pid and its pane are both gone and at
    # least this long has passed since the spawn (earlier, tmux may not list the pane yet).
    grace_min_dead: float = 1.0
    # None: each role's own (`identities.HEARTBEAT_INTERVALS`); a number: that one for all.
    heartbeat_interval: float | None = None
    stale_after_intervals: int = 3
    # A control process (launcher, guardian, runner) that has not yet sent its first heartbeat
    # is judged by its start-up, never by that heartbeat: alive and inside the start-up grace
    # (measured, see `Supervisor.startup_grace`), or past it and still making progress (CPU time
    # advancing, or runnable) within `startup_stall` seconds; never longer than `startup_limit`.
    startup_floor: float = 15.0
    startup_ceiling: float = 120.0
    startup_factor: float = 3.0
    startup_percentile: float = 0.95
    startup_stall: float = 30.0
    startup_limit: float = 600.0
    # At most this many control processes of one spawner start at once (spawns are paced).
    max_starting: int = 3
    hung_after: float = 600.0
    escalation_agents: int = 3
    escalation_window: float = 60.0
    escalation_cooldown: float = 120.0
    # Roles whose deaths neither count toward nor wait for an escalation: the guardian must
    # always come back, since it is the one that resolves the rest.
    escalation_exempt_roles: frozenset[str] = frozenset({"launcher", "guardian"})

    def heartbeat_for(self, role: str) -> float:
        """The heartbeat interval staleness of `role` is measured in."""
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return HEARTBEAT_INTERVALS.get(role) or CONTROL_HEARTBEAT_INTERVAL

    def backoff(self, consecutive_deaths: int) -> float:
        """The delay before respawn number `consecutive_deaths`, before jitter: 0 for the first
        death, then base, base*factor, … capped at `max_delay`."""
        if consecutive_deaths <= 1:
            return 0.0
        exponent = min(consecutive_deaths - 2, 200)
        return float(min(self.max_delay, self.base_delay * self.factor**exponent))


class Action(enum.Enum):
    RESPAWN_NOW = "respawn_now"
    RESPAWN_AT = "respawn_at"
    QUARANTINE = "quarantine"
    PAUSED = "paused"


@dataclass(frozen=True)
class Decision:
    action: Action
    at: float  # POSIX seconds: earliest respawn (for QUARANTINE: the time of the decision)
    delay: float
    reason: str


@dataclass(frozen=True)
class Death:
    at: float
    cause: str
    exit_code: int | None = None
    key: str | None = None  # which death this is (see the module docstring); None: unknown

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "cause": self.cause, "exit_code": self.exit_code, "key": self.key}

    @classmethod
    def from_json(cls, data: Any) -> Death:
        # key: null in deaths recorded before deaths had keys
        data = records.fields("death", data, ("at", "cause", "exit_code", "key"), None, older={"key": None},
                              types={"cause": (str,), "exit_code": records.OPTIONAL_INT, "key": records.OPTIONAL_TEXT})
        return cls(parse_iso(_str(data, "at")), data["cause"], data["exit_code"], data["key"])


@dataclass(frozen=True)
class StartupSample:
    agent_id: str
    epoch: int
    seconds: float
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "epoch": self.epoch, "seconds": round(self.seconds, 3),
                "at": iso(self.at)}

    @classmethod
    def from_json(cls, data: Any) -> StartupSample:
        data = records.fields("start-up sample", data, ("agent_id", "epoch", "seconds", "at"), None)
        seconds = data["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"bad start-up seconds {seconds!r}")
        return cls(_str(data, "agent_id"), _int(data, "epoch"), float(seconds), parse_iso(_str(data, "at")))


@dataclass(frozen=True)
class StartupTimes:
    layers: tuple[tuple[str, tuple[StartupSample, ...]], ...] = ()

    def samples(self, role: str) -> tuple[StartupSample, ...]:
        return next((found for name, found in self.layers if name == role), ())

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "layers": {role: [s.to_json() for s in found] for role, found in self.layers}}

    @classmethod
    def from_json(cls, data: Any) -> StartupTimes:
        layers = records.fields("start-up times", data, ("schema", "layers"), SCHEMA)["layers"]
        if not isinstance(layers, dict) or not all(isinstance(v, list) for v in layers.values()):
            raise ValueError("field 'layers' must map roles to lists")
        return cls(tuple(sorted((str(role), tuple(StartupSample.from_json(s) for s in found))
                                for role, found in layers.items())))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (not empty), `fraction` in [0, 1]."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class AgentSupervision:
    agent_id: str
    deaths: tuple[Death, ...] = ()
    consecutive_deaths: int = 0
    restarts: int = 0
    awaiting_respawn: bool = False
    next_restart_at: float | None = None
    quarantined: bool = False
    quarantine_reason: str = ""
    quarantined_at: float | None = None
    healthy_since: float | None = None
    updated_at: float | None = None

    def deaths_within(self, now: float, window: float) -> int:
        return sum(1 for d in self.deaths if now - d.at < window)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "agent_id": self.agent_id,
            "deaths": [d.to_json() for d in self.deaths],
            "consecutive_deaths": self.consecutive_deaths,
            "restarts": self.restarts,
            "awaiting_respawn": self.awaiting_respawn,
            "next_restart_at": _iso_or_none(self.next_restart_at),
            "quarantined": self.quarantined,
            "quarantine_reason": self.quarantine_reason,
            "quarantined_at": _iso_or_none(self.quarantined_at),
            "healthy_since": _iso_or_none(self.healthy_since),
            "updated_at": _iso_or_none(self.updated_at),
        }

    @classmethod
    def from_json(cls, data: Any) -> AgentSupervision:
        data = records.fields("supervision record", data, _AGENT_FIELDS, SCHEMA)
        deaths = data["deaths"]
        if not isinstance(deaths, list):
            raise ValueError("field 'deaths' must be a list")
        return cls(
            agent_id=validate_agent_id(_str(data, "agent_id")),
            deaths=tuple(Death.from_json(d) for d in deaths),
            consecutive_deaths=_int(data, "consecutive_deaths"),
            restarts=_int(data, "restarts"),
            awaiting_respawn=_bool(data, "awaiting_respawn"),
            next_restart_at=_time_or_none(data, "next_restart_at"),
            quarantined=_bool(data, "quarantined"),
            quarantine_reason=_str(data, "quarantine_reason"),
            quarantined_at=_time_or_none(data, "quarantined_at"),
            healthy_since=_time_or_none(data, "healthy_since"),
            updated_at=_time_or_none(data, "updated_at"),
        )


@dataclass(frozen=True)
class Escalation:
    started_at: float
    until: float
    agents: tuple[str, ...]
    reason: str
    cleared_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"started_at": iso(self.started_at), "until": iso(self.until),
                "agents": list(self.agents), "reason": self.reason,
                "cleared_at": _iso_or_none(self.cleared_at)}

    @classmethod
    def from_json(cls, data: Any) -> Escalation:
        data = records.fields("escalation", data, ("started_at", "until", "agents", "reason", "cleared_at"), None)
        agents = data["agents"]
        if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
            raise ValueError("field 'agents' must be a list of strings")
        return cls(parse_iso(_str(data, "started_at")), parse_iso(_str(data, "until")),
                   tuple(agents), _str(data, "reason"), _time_or_none(data, "cleared_at"))


@dataclass(frozen=True)
class EscalationState:
    recent: tuple[tuple[str, float], ...] = ()
    active: Escalation | None = None
    alerts: tuple[Escalation, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA,
                "recent": [{"agent_id": a, "at": iso(t)} for a, t in self.recent],
                "active": self.active.to_json() if self.active else None,
                "alerts": [e.to_json() for e in self.alerts]}

    @classmethod
    def from_json(cls, data: Any) -> EscalationState:
        data = records.fields("escalation record", data, ("schema", "recent", "active", "alerts"), SCHEMA)
        recent, alerts = data["recent"], data["alerts"]
        if not isinstance(recent, list) or not isinstance(alerts, list):
            raise ValueError("fields 'recent' and 'alerts' must be lists")
        pairs = []
        for entry in recent:
            death = records.fields("recent death", entry, ("agent_id", "at"), None)
            pairs.append((_str(death, "agent_id"), parse_iso(_str(death, "at"))))
        active = data["active"]
        return cls(tuple(pairs), Escalation.from_json(active) if active is not None else None,
                   tuple(Escalation.from_json(e) for e in alerts))


_AGENT_FIELDS = ("schema", "agent_id", "deaths", "consecutive_deaths", "restarts", "awaiting_respawn",
                 "next_restart_at", "quarantined", "quarantine_reason", "quarantined_at", "healthy_since",
                 "updated_at")


def _no_record(path: Path) -> NotFoundError:
    return NotFoundError("supervision record", str(path))


# Supervision moves a corrupt file aside at once (its readers may hold the file's lock already)
# and starts fresh for that agent.
_AGENT = records.Kind("supervision record", SCHEMA, AgentSupervision.from_json, _no_record,
                      stem=lambda record: record.agent_id, lock=False)
_ESCALATION = records.Kind("escalation record", SCHEMA, EscalationState.from_json, _no_record, lock=False)
_STARTUP = records.Kind("start-up times", SCHEMA, StartupTimes.from_json, _no_record, lock=False)


def _iso_or_none(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {value!r}")
    return value


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"field {key!r} must be a non-negative integer, got {value!r}")
    return value


def _bool(data: dict[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"field {key!r} must be true or false, got {value!r}")
    return value


def _time_or_none(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    return None if value is None else parse_iso(_str(data, key))


def _role_of(agent_id: str) -> str | None:
    try:
        return split_agent_id(agent_id)[0]
    except Exception:
        return None


class Supervisor:
    """The respawn policy over the files of one state directory. Not thread-safe; one guardian
    (or launcher) drives it, while `attractor agent clear` may change the files at any time."""

    def __init__(self, state: StateDir | str | os.PathLike[str], config: PolicyConfig | None = None,
                 clock: Clock = SYSTEM_CLOCK, rng: random.Random | None = None) -> None:
        root = state.root if isinstance(state, StateDir) else Path(state)
        self.state_root = root
        self.directory = root / SUBDIR
        self.config = config or PolicyConfig()
        self.clock = clock
        self.rng = rng or random.Random()
        self.problems: list[CorruptStateError] = []
        self._cache: dict[Path, tuple[tuple[int, int, int], Any]] = {}
        self._dir_ready = False

    # --- files ------------------------------------------------------------------------------

    def path_of(self, agent_id: str) -> Path:
        return self.directory / f"{validate_agent_id(agent_id)}.json"

    @property
    def escalation_path(self) -> Path:
        return self.directory / ESCALATION_FILE

    def _ensure_dir(self) -> None:
        if not self._dir_ready:
            ensure_private_dir(self.state_root)
            ensure_private_dir(self.directory)
            self._dir_ready = True

    def _read(self, path: Path, kind: records.Kind[R]) -> R | None:
        """The parsed record at `path` or None; a corrupt file is moved aside and reported.
        Parsed records are cached by (inode, mtime, size): atomic replace changes the inode."""
        try:
            st = path.stat()
        except FileNotFoundError:
            self._cache.pop(path, None)
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            hit: R = cached[1]
            return hit
        try:
            record = kind.load(path)
        except FileNotFoundError:
            return None
        except CorruptStateError as exc:
            self._report(exc)
            return None
        self._cache[path] = (key, record)
        return record

    def _report(self, exc: CorruptStateError) -> None:
        self.problems.append(exc)
        logger.warning("supervision: %s; starting fresh", exc, extra={"att_path": str(exc.path)})

    def _write(self, path: Path, record: Any, *, fsync: bool = True) -> None:
        self._ensure_dir()
        write_json_atomic(path, record.to_json(), fsync=fsync)
        self._cache.pop(path, None)  # re-read: inode numbers and coarse mtimes can repeat

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        self._ensure_dir()
        with file_lock(path):
            yield

    def _load(self, agent_id: str) -> AgentSupervision | None:
        return self._read(self.path_of(agent_id), _AGENT)

    def _load_escalation(self) -> EscalationState:
        return self._read(self.escalation_path, _ESCALATION) or EscalationState()

    # --- policy -----------------------------------------------------------------------------

    def record_death(self, agent_id: str, cause: str, exit_code: int | None = None, *,
                     key: str | None = None, escalate: bool = True) -> Decision:
        """Record that `agent_id` died and decide what to do about it.

        `key` names the death (the incarnation that died): a death with a key already recorded
        is the same death seen again (by a later tick, or a restarted supervisor) and only gets
        the decision already made. `escalate=False`: the death does not count toward an
        escalation (the supervisor itself ended a process that was still starting)."""
        cfg = self.config
        path = self.path_of(agent_id)
        with self._locked(path):
            now = self.clock.time()
            old = self._load(agent_id) or AgentSupervision(agent_id)
            if key is not None and any(d.key == key for d in old.deaths):
                return self._standing_decision(old, now, f"death {key} already recorded")
            deaths = (*old.deaths, Death(now, cause, exit_code, key))[-MAX_DEATHS_KEPT:]
            rec = replace(old, deaths=deaths, consecutive_deaths=old.consecutive_deaths + 1,
                          awaiting_respawn=True, healthy_since=None, updated_at=now)
            in_window = rec.deaths_within(now, cfg.quarantine_window)
            if old.quarantined:
                decision = Decision(Action.QUARANTINE, now, 0.0, old.quarantine_reason)
            elif exit_code is not None and exit_code in cfg.do_not_retry_exit_codes:
                decision = Decision(Action.QUARANTINE, now, 0.0,
                                    f"exit code {exit_code} means do not retry ({cause})")
            elif in_window >= cfg.quarantine_deaths:
                decision = Decision(Action.QUARANTINE, now, 0.0,
                                    f"{in_window} deaths within {cfg.quarantine_window:g}s "
                                    f"(last: {cause})")
            else:
                raw = cfg.backoff(rec.consecutive_deaths)
                delay = 0.0
                if raw > 0:
                    spread = self.rng.uniform(1.0 - cfg.jitter, 1.0 + cfg.jitter)
                    delay = min(cfg.max_delay, raw * spread)
                action = Action.RESPAWN_NOW if delay == 0 else Action.RESPAWN_AT
                decision = Decision(action, now + delay, delay,
                                    f"death {rec.consecutive_deaths} in a row ({cause})")
            if decision.action is Action.QUARANTINE:
                rec = replace(rec, quarantined=True, quarantine_reason=decision.reason,
                              quarantined_at=old.quarantined_at if old.quarantined else now,
                              next_restart_at=None)
            else:
                rec = replace(rec, next_restart_at=decision.at)
            self._write(path, rec)
        if decision.action is Action.QUARANTINE:
            if not old.quarantined:
                logger.warning("supervision: %s quarantined: %s", agent_id, decision.reason,
                               extra={"att_agent": agent_id})
            if escalate:
                self._note_death(agent_id, now)
            return decision
        escalation = self._note_death(agent_id, now) if escalate else self.escalation()
        if escalation is not None and not self.escalation_exempt(agent_id):
            at = max(decision.at, escalation.until)
            return Decision(Action.PAUSED, at, at - now,
                            f"respawns paused by escalation until {iso(escalation.until)}: "
                            f"{escalation.reason}")
        logger.info("supervision: %s died (%s); %s in %.3gs", agent_id, cause,
                    decision.action.value, decision.delay, extra={"att_agent": agent_id})
        return decision

    def _standing_decision(self, rec: AgentSupervision, now: float, why: str) -> Decision:
        """The decision already in force for `rec` (a death seen again is not a new one)."""
        if rec.quarantined:
            return Decision(Action.QUARANTINE, now, 0.0, rec.quarantine_reason)
        at = max(now, rec.next_restart_at or now)
        escalation = None if self.escalation_exempt(rec.agent_id) else self.escalation()
        if escalation is not None:
            at = max(at, escalation.until)
            return Decision(Action.PAUSED, at, at - now, f"{why}; respawns paused by escalation until "
                                                         f"{iso(escalation.until)}: {escalation.reason}")
        action = Action.RESPAWN_NOW if at <= now + TIME_RESOLUTION else Action.RESPAWN_AT
        return Decision(action, at, at - now, why)

    # --- start-up times ---------------------------------------------------------------------

    @property
    def startup_path(self) -> Path:
        return self.directory / STARTUP_FILE

    def startup_times(self) -> StartupTimes:
        return self._read(self.startup_path, _STARTUP) or StartupTimes()

    def record_startup(self, agent_id: str, epoch: int, seconds: float) -> bool:
        """Record that incarnation `epoch` of `agent_id` took `seconds` from its spawn to its
        first heartbeat. Once per incarnation: False when it was already recorded."""
        role = _role_of(agent_id)
        if role is None or seconds < 0:
            return False
        path = self.startup_path
        with self._locked(path):
            times = self.startup_times()
            mine = times.samples(role)
            if any(s.agent_id == agent_id and s.epoch == epoch for s in mine):
                return False
            sample = StartupSample(agent_id, epoch, seconds, self.clock.time())
            layers = dict(times.layers)
            layers[role] = (*mine, sample)[-STARTUP_SAMPLES_KEPT:]
            self._write(path, StartupTimes(tuple(sorted(layers.items()))), fsync=False)
        logger.info("supervision: %s (epoch %d) started in %.2fs", agent_id, epoch, seconds,
                    extra={"att_agent": agent_id})
        return True

    def startup_grace(self, role: str) -> float:
        """How long a process of `role` may take to send its first heartbeat before it must
        show progress: the measured start-ups of that role on this machine, a high percentile
        times a factor, within the floor and the ceiling (the floor while nothing is measured)."""
        cfg = self.config
        samples = [s.seconds for s in self.startup_times().samples(role)]
        if not samples:
            return cfg.startup_floor
        measured = percentile(samples, cfg.startup_percentile) * cfg.startup_factor
        return min(cfg.startup_ceiling, max(cfg.startup_floor, measured))

    def _note_death(self, agent_id: str, now: float) -> Escalation | None:
        """Count the death toward escalation; start one if too many agents died. Returns the
        active escalation, if any."""
        cfg = self.config
        if self.escalation_exempt(agent_id):
            return self.escalation()
        path = self.escalation_path
        with self._locked(path):
            state = self._load_escalation()
            recent = tuple((a, t) for a, t in state.recent if now - t < cfg.escalation_window)
            recent = (*recent, (agent_id, now))
            active = state.active
            if active is not None and (active.cleared_at is not None or now >= active.until):
                active = None
            alerts = state.alerts
            distinct = sorted({a for a, _ in recent})
            started = False
            if active is None and len(distinct) > cfg.escalation_agents:
                active = Escalation(
                    now, now + cfg.escalation_cooldown, tuple(distinct),
                    f"{len(distinct)} agents died within {cfg.escalation_window:g}s")
                alerts = (*alerts, active)[-MAX_ALERTS:]
                started = True
            self._write(path, EscalationState(recent, active, alerts))
        if started and active is not None:
            logger.warning(
                "supervision: ESCALATION: %s (%s); all respawns paused until %s or "
                "'attractor agent clear --escalation'", active.reason, ", ".join(active.agents),
                iso(active.until), extra={"att_escalation": list(active.agents)})
        return active

    def record_respawn(self, agent_id: str) -> None:
        """The caller started a new process for `agent_id`: the pending respawn is done."""
        path = self.path_of(agent_id)
        with self._locked(path):
            now = self.clock.time()
            rec = self._load(agent_id) or AgentSupervision(agent_id)
            self._write(path, replace(rec, restarts=rec.restarts + 1, awaiting_respawn=False,
                                      healthy_since=None, updated_at=now))

    def record_healthy(self, agent_id: str) -> None:
        """Call on every tick the agent is seen ALIVE. Starts the healthy period, and after
        `reset_after` seconds of it resets the backoff level. An agent with a pending respawn
        that is seen alive (a death reported by mistake, or a respawn the caller did not
        record) no longer awaits one. Writes only when something changes."""
        rec = self._load(agent_id)
        if rec is None or rec.quarantined:
            return
        now = self.clock.time()
        if rec.healthy_since is not None and not rec.awaiting_respawn and (
                rec.consecutive_deaths == 0 or now - rec.healthy_since < self.config.reset_after):
            return
        path = self.path_of(agent_id)
        with self._locked(path):
            rec = self._load(agent_id)
            if rec is None or rec.quarantined:
                return
            new = replace(rec, awaiting_respawn=False)
            if rec.healthy_since is None:
                new = replace(new, healthy_since=now)
            elif now - rec.healthy_since >= self.config.reset_after and rec.consecutive_deaths:
                new = replace(new, consecutive_deaths=0, next_restart_at=None)
                logger.info("supervision: %s healthy for %gs; backoff reset", agent_id,
                            now - rec.healthy_since, extra={"att_agent": agent_id})
            if new != rec:
                self._write(path, replace(new, updated_at=now), fsync=False)

    def record_unhealthy(self, agent_id: str) -> None:
        """The agent is alive but not healthy (stale, hung, blocked): its healthy period ends."""
        rec = self._load(agent_id)
        if rec is None or rec.healthy_since is None:
            return
        path = self.path_of(agent_id)
        with self._locked(path):
            rec = self._load(agent_id)
            if rec is not None and rec.healthy_since is not None:
                self._write(path, replace(rec, healthy_since=None, updated_at=self.clock.time()),
                            fsync=False)

    def escalation(self) -> Escalation | None:
        """The escalation pausing all respawns now, or None."""
        active = self._load_escalation().active
        if active is None or active.cleared_at is not None or self.clock.time() >= active.until:
            return None
        return active

    def may_respawn(self, agent_id: str) -> bool:
        """True unless quarantined, inside its backoff delay, or paused by an escalation."""
        rec = self._load(agent_id)
        if rec is not None and rec.quarantined:
            return False
        now = self.clock.time()
        if rec is not None and rec.next_restart_at is not None \
                and now + TIME_RESOLUTION < rec.next_restart_at:
            return False
        return self.escalation_exempt(agent_id) or self.escalation() is None

    def escalation_exempt(self, agent_id: str) -> bool:
        return _role_of(agent_id) in self.config.escalation_exempt_roles

    def due_respawns(self) -> list[str]:
        """Agents with a recorded death, no respawn since, and `may_respawn` now; sorted."""
        return [rec.agent_id for rec in self.all_states()
                if rec.awaiting_respawn and self.may_respawn(rec.agent_id)]

    def next_due_at(self) -> float | None:
        """When the next pending respawn becomes allowed (for the caller's sleep), or None."""
        times = []
        paused = self.escalation()
        for rec in self.all_states():
            if not rec.awaiting_respawn or rec.quarantined:
                continue
            at = rec.next_restart_at or self.clock.time()
            if paused is not None and not self.escalation_exempt(rec.agent_id):
                at = max(at, paused.until)
            times.append(at)
        return min(times) if times else None

    def clear(self, agent_id: str) -> AgentSupervision:
        """Lift a quarantine (or just reset the counters): the deaths are forgotten, the agent is
        due for respawn now if it was waiting for one. Also moves its identity out of
        `quarantined` when the identity registry is available."""
        path = self.path_of(agent_id)
        with self._locked(path):
            now = self.clock.time()
            old = self._load(agent_id) or AgentSupervision(agent_id)
            rec = replace(old, deaths=(), consecutive_deaths=0, quarantined=False,
                          quarantine_reason="", quarantined_at=None,
                          next_restart_at=now if old.awaiting_respawn else None, updated_at=now)
            self._write(path, rec)
        was = f"quarantined: {old.quarantine_reason}" if old.quarantined else "not quarantined"
        logger.info("supervision: %s cleared (was %s)", agent_id, was,
                       extra={"att_agent": agent_id})
        release_identity(self.state_root, agent_id)
        return rec

    def clear_escalation(self) -> Escalation | None:
        """End the active escalation now; returns it (None if there was none)."""
        path = self.escalation_path
        with self._locked(path):
            now = self.clock.time()
            state = self._load_escalation()
            active = state.active
            if active is None or active.cleared_at is not None or now >= active.until:
                self._write(path, replace(state, active=None, recent=()))
                return None
            cleared = replace(active, cleared_at=now)
            alerts = tuple(cleared if a == active else a for a in state.alerts)
            self._write(path, EscalationState((), None, alerts))
        logger.info("supervision: escalation cleared; respawns resume")
        return cleared

    def alerts(self) -> tuple[Escalation, ...]:
        return self._load_escalation().alerts

    def state_of(self, agent_id: str) -> AgentSupervision:
        return self._load(agent_id) or AgentSupervision(agent_id)

    def all_states(self) -> list[AgentSupervision]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        records = []
        for name in names:
            if not name.endswith(".json") or name in (ESCALATION_FILE, STARTUP_FILE) or name.startswith("."):
                continue
            try:
                rec = self._load(name[: -len(".json")])
            except InvalidNameError:  # a file whose name is not an agent id
                continue
            if rec is not None:
                records.append(rec)
        return records


def release_identity(state_root: Path, agent_id: str) -> bool:
    """Move the agent's identity from `quarantined` to `respawning`, if it is quarantined.
    Returns True when it moved."""
    from attractor.store import identities

    state = StateDir(state_root)
    try:
        role, name = split_agent_id(agent_id)
        record = identities.find(state, role, name)
    except AttractorError as exc:  # a bad id or a corrupt record: nothing to move
        logger.debug("supervision: identity of %s not released: %s", agent_id, exc)
        return False
    if record is None or record.status is not IdentityStatus.QUARANTINED:
        return False
    identities.set_status(state, role, name, IdentityStatus.RESPAWNING, reason="cleared by user")
    return True


def clear_agent(state_root: Path, agent_id: str) -> str:
    """Lift `agent_id`'s quarantine, or reset its death counters; what was done, in one line.
    The one implementation behind `attractor agent clear` and the daemon's `agent.clear`."""
    sup = Supervisor(state_root)
    if not sup.path_of(agent_id).exists():
        if release_identity(state_root, agent_id):
            return f"cleared {agent_id}: identity released from quarantine"
        raise NotFoundError("supervised agent", agent_id, "see 'attractor agent list'")
    before = sup.state_of(agent_id)
    sup.clear(agent_id)
    if before.quarantined:
        return (f"cleared {agent_id}: quarantine lifted ({before.quarantine_reason}); "
                "it is respawned on the guardian's next tick")
    return f"cleared {agent_id}: not quarantined; death counters reset"


def clear_escalation(state_root: Path) -> str:
    """End the escalation that pauses every respawn; what was done, in one line."""
    ended = Supervisor(state_root).clear_escalation()
    return "escalation cleared; respawns resume" if ended else "no active escalation"


# --- detection ------------------------------------------------------------------------------


class Health(enum.Enum):
    STARTING = "starting"
    ALIVE = "alive"
    DEAD = "dead"
    STALE = "stale"
    HUNG = "hung"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class AgentObservation:
    agent_id: str
    role: str
    spawned_at: float
    pid: int | None
    pid_alive: bool
    pane_present: bool
    pane_dead: bool = False
    last_heartbeat: float | None = None
    last_pane_activity: float | None = None
    pane_text_tail: str | None = None
    # A control process that has not sent its first heartbeat yet (identity still spawning):
    # judged by its start-up. `startup_grace` is the measured grace of its layer (None: the
    # floor); `last_progress` the last time it was seen making progress (None: never seen).
    starting: bool = False
    startup_grace: float | None = None
    last_progress: float | None = None


@dataclass(frozen=True)
class HealthReport:
    health: Health
    reason: str
    prompt: PromptMatch | None = None


def classify(agent: AgentObservation, now: float,
             config: PolicyConfig | None = None, rules: Sequence[PromptRule] | None = None) -> HealthReport:
    """How `agent` is doing at `now`. Rules, in order:

    1. Dead means the recorded pid is not alive, or the pane is missing or dead.
    2. Inside the start-up grace period an agent is never DEAD, STALE or HUNG, with one
       exception: once `grace_min_dead` has passed, a known pid that is gone AND a pane that is
       gone both say the same thing, and waiting for the grace to end would only delay the
       respawn of an agent that crashed at start. Before that, tmux may not list the pane yet.
    3. BLOCKED (agents, not control processes): the pane's text ends at a known prompt. Allowed
       during the grace period: trust dialogs appear exactly then.
    4. A control process still starting (no heartbeat of its own yet) is never judged by a
       heartbeat: it is STARTING inside its start-up grace, and after it while it makes
       progress (seen within `startup_stall`); STALE when it stopped making progress, or when it
       has been starting for longer than `startup_limit`.
    5. Control processes (guardian, runner, …) are STALE when their heartbeat (or, before the
       first one, the spawn) is older than `stale_after_intervals` of their role's heartbeat
       interval.
    6. Agents are HUNG when their pane (or, before any activity, the spawn) has been quiet for
       longer than `hung_after`.
    """
    cfg = config or PolicyConfig()
    age = now - agent.spawned_at
    pid_gone = agent.pid is not None and not agent.pid_alive
    pane_gone = not agent.pane_present or agent.pane_dead
    pane_text = "missing" if not agent.pane_present else "dead"
    in_grace = age < cfg.startup_grace
    if pid_gone or pane_gone:
        parts = ([f"pid {agent.pid} not alive"] if pid_gone else []) + \
                ([f"pane {pane_text}"] if pane_gone else [])
        reason = " and ".join(parts)
        if not in_grace:
            return HealthReport(Health.DEAD, reason)
        if pid_gone and pane_gone and age >= cfg.grace_min_dead:
            return HealthReport(Health.DEAD, f"{reason} ({age:.1f}s after spawn, in grace)")
        return HealthReport(Health.STARTING, f"{reason}, but {age:.1f}s after spawn is within "
                                             f"the {cfg.startup_grace:g}s grace")
    control = agent.role in CONTROL_ROLES
    if not control and agent.pane_text_tail:
        found = match_prompt(agent.pane_text_tail, now, PROMPTS if rules is None else rules)
        if found is not None:
            return HealthReport(Health.BLOCKED, found.reason, found)
    if in_grace:
        return HealthReport(Health.STARTING,
                            f"{age:.1f}s after spawn, grace {cfg.startup_grace:g}s")
    if control and agent.starting:
        return _classify_startup(agent, now, cfg)
    if control:
        limit = cfg.stale_after_intervals * cfg.heartbeat_for(agent.role)
        since = agent.last_heartbeat if agent.last_heartbeat is not None else agent.spawned_at
        what = "last heartbeat" if agent.last_heartbeat is not None else "spawn, no heartbeat"
        if now - since > limit:
            return HealthReport(Health.STALE, f"{what} {now - since:.1f}s ago (> {limit:g}s)")
        return HealthReport(Health.ALIVE, f"heartbeat {now - since:.1f}s ago")
    since = agent.last_pane_activity if agent.last_pane_activity is not None else agent.spawned_at
    if now - since > cfg.hung_after:
        return HealthReport(Health.HUNG, f"no pane activity for {now - since:.0f}s "
                                         f"(> {cfg.hung_after:g}s)")
    return HealthReport(Health.ALIVE, f"pane active {now - since:.1f}s ago")


def _classify_startup(agent: AgentObservation, now: float, cfg: PolicyConfig) -> HealthReport:
    age = now - agent.spawned_at
    grace = cfg.startup_floor if agent.startup_grace is None else agent.startup_grace
    if age < grace:
        return HealthReport(Health.STARTING, f"starting for {age:.1f}s, grace {grace:.3g}s")
    if age > cfg.startup_limit:
        return HealthReport(Health.STALE, f"still starting {age:.0f}s after spawn (> {cfg.startup_limit:g}s)")
    since = agent.last_progress if agent.last_progress is not None else agent.spawned_at
    if now - since > cfg.startup_stall:
        return HealthReport(Health.STALE, f"starting for {age:.1f}s (past the {grace:.3g}s grace) and no "
                                          f"progress for {now - since:.1f}s (> {cfg.startup_stall:g}s)")
    return HealthReport(Health.STARTING, f"starting for {age:.1f}s, past the {grace:.3g}s grace but "
                                         f"making progress ({now - since:.1f}s ago)")

