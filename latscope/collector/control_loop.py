"""The collector's side of the control plane: obey Redis commands without ever stalling the measuring.

The daemon's main loop calls ``ControlLoop.run_once`` between its other work
(draining ring buffers, shipping records). Each call reads the host's pending
commands, hands them to the *handler* (the part that owns the BPF programs),
acks each one, and publishes a heartbeat when one is due. It returns within
about ``timeout_s`` whatever Redis does: when Redis is gone it marks itself
disconnected, counts the error and retries with capped exponential backoff on
later calls, while the caller keeps measuring. There are no threads.

The protocol itself (keys, wire format, validation) is
``plugins/module_utils/control.py``; this module is only the driver.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Protocol, Tuple, Union

from ansible_collections.latscope.latscope.plugins.module_utils.control import (
    CURSOR_FIELD, HOOK_PROFILES, Agent, Command, ControlPlaneError, check_session, make_command, one_line)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from latscope import __version__

LOG = logging.getLogger(__name__)
REMEMBERED_ANSWERS = 64         # a re-delivered command (its ack was lost) gets its first answer again
MAX_BACKOFF_DOUBLINGS = 30

Answer = Tuple[bool, str, Dict[str, Any]]


class Handler(Protocol):
    """What the loop drives. Each method returns the host's new state, or raises InputError naming the field."""

    def start(self, command: Command) -> Dict[str, Any]:
        ...

    def stop(self, command: Command) -> Dict[str, Any]:
        ...

    def sync(self, command: Command) -> Dict[str, Any]:
        ...


class ControlLoop:
    """Read, dispatch and ack commands for one host; heartbeat; survive Redis going away.

    One session runs at a time: a start for the running session is answered
    again without restarting it, a start for another one and a stop for a
    session that is not running are refused naming ``command.session``. A
    session started with ``duration_s`` is stopped by the loop when it is over.
    """

    def __init__(self, agent_factory: Callable[[], Agent], handler: Handler, heartbeat_interval_s: float = 5.0, *,
                 hook_profile: str = "auto", version: str = __version__, active_session: Optional[str] = None,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        if not 0.05 <= heartbeat_interval_s <= 3600:
            raise InputError("heartbeat_interval_s", "must be between 0.05 and 3600 seconds", heartbeat_interval_s)
        if hook_profile not in HOOK_PROFILES:
            raise InputError("hook_profile", f"must be one of {', '.join(HOOK_PROFILES)}", hook_profile)
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise InputError("backoff_initial_s", "must be positive and at most backoff_max_s", backoff_initial_s)
        if not isinstance(version, str) or not 0 < len(version) <= 64:
            raise InputError("version", "must be a string of 1-64 characters", version)
        if active_session is not None:
            check_session(active_session, "active_session")
        self.agent_factory = agent_factory
        self.handler = handler
        self.heartbeat_interval_s = heartbeat_interval_s
        self.version = version
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.session = active_session
        self.state: Dict[str, Any] = {"state": "running" if active_session else "idle", "session": active_session,
                                      "hook_profile": hook_profile}
        self.agent: Optional[Agent] = None
        self.redis_errors = 0
        self.commands_handled = 0
        self.commands_rejected = 0
        self._session_deadline: Optional[float] = None
        self._failures = 0
        self._retry_at = 0.0
        self._next_heartbeat = 0.0
        self._state_dirty = True
        self._answers: "OrderedDict[str, Answer]" = OrderedDict()
        self._started = time.monotonic()

    @property
    def connected(self) -> bool:
        return self.agent is not None

    def run_once(self, timeout_s: float) -> int:
        """Handle what arrives within ``timeout_s``; return how many commands were answered. Never raises for Redis."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._end_expired_session()
        agent = self._agent(deadline)
        if agent is None:
            return 0
        answered = 0
        try:
            if self._state_dirty:
                agent.set_state(self.state)
                self._state_dirty = False
            if time.monotonic() >= self._next_heartbeat:
                self._beat(agent)
            wake = min(deadline, self._next_heartbeat, self._session_deadline or deadline)
            for entry_id, item in agent.next_commands(int(max(0.0, wake - time.monotonic()) * 1000)):
                self._answer(agent, entry_id, item)
                answered += 1
            if self._state_dirty:
                agent.set_state(self.state)
                self._state_dirty = False
                self._beat(agent)
        except ControlPlaneError as exc:
            self._lost(exc)
        return answered

    # --- connection -----------------------------------------------------------------------------

    def _agent(self, deadline: float) -> Optional[Agent]:
        """The connected agent, connecting when the backoff allows it before ``deadline``."""
        if self.agent is not None:
            return self.agent
        now = time.monotonic()
        if now < self._retry_at:
            time.sleep(max(0.0, min(deadline, self._retry_at) - now))   # the caller gave us this long anyway
            if time.monotonic() < self._retry_at:
                return None
        try:
            self.agent = self.agent_factory()
        except (ControlPlaneError, InputError, OSError) as exc:
            self._lost(exc)
            return None
        if self._failures:
            LOG.warning("control plane is back after %d failed attempt(s)", self._failures)
        self._failures = 0
        self._state_dirty = True
        self._next_heartbeat = 0.0
        return self.agent

    def _lost(self, exc: Exception) -> None:
        """Count a Redis failure, drop the connection and schedule the next attempt."""
        self.redis_errors += 1
        self._failures += 1
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(self._failures - 1, MAX_BACKOFF_DOUBLINGS))
        self._retry_at = time.monotonic() + delay
        log = LOG.warning if self._failures == 1 else LOG.debug
        log("control plane unavailable (%s); measuring goes on, next attempt in %.2fs", one_line(exc), delay)

    def _beat(self, agent: Agent) -> None:
        profile = self.state.get("hook_profile")
        agent.heartbeat({"pid": os.getpid(), "version": self.version, "hook_profile": profile if profile in HOOK_PROFILES else "auto",
                         "session": self.session, "uptime_s": round(time.monotonic() - self._started, 3)},
                        self.heartbeat_interval_s)
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval_s

    # --- commands -------------------------------------------------------------------------------

    def _answer(self, agent: Agent, entry_id: str, item: Union[Command, InputError]) -> None:
        if isinstance(item, InputError):
            LOG.warning("rejected command entry %s: %s", entry_id, one_line(item))
            agent.nack(entry_id, item)
            self.commands_rejected += 1
            return
        answer = self._answers.get(item.command_id)
        if answer is None:
            answer = self._run(item)
            self._answers[item.command_id] = answer
            while len(self._answers) > REMEMBERED_ANSWERS:
                self._answers.popitem(last=False)
        ok, error, state = answer
        agent.ack(item, ok, error, state, entry_id)
        if ok:
            self.commands_handled += 1
        else:
            LOG.warning("refused %s %s: %s", item.op, item.session, error)
            self.commands_rejected += 1

    def _run(self, command: Command) -> Answer:
        """Carry out one command; a handler error becomes the ack's error, never the loop's."""
        try:
            if command.op == "start":
                self._start(command)
            elif command.op == "stop":
                self._stop(command)
            elif command.op == "sync":
                self._update(self.handler.sync(command))
        except InputError as exc:
            return False, one_line(exc), dict(self.state)
        except Exception as exc:  # pylint: disable=broad-except  # a handler bug must not stop the daemon
            LOG.exception("handler failed on %s %s", command.op, command.session)
            return False, one_line(f"internal error: {type(exc).__name__}: {exc}"), dict(self.state)
        return True, "", dict(self.state)

    def _start(self, command: Command) -> None:
        if self.session == command.session:
            return
        if self.session is not None:
            raise InputError("command.session", f"session {self.session} is running on this host; stop it first", command.session)
        result = self.handler.start(command)
        self.session = command.session
        self._update(result, state="running", error=None)
        self._session_deadline = time.monotonic() + command.duration_s if command.duration_s else None

    def _stop(self, command: Command) -> None:
        if command.session != self.session:
            running = f"session {self.session} is" if self.session else "no session is"
            raise InputError("command.session", f"no such session on this host ({running} running)", command.session)
        result = self.handler.stop(command)
        self.session = None
        self._session_deadline = None
        self._update(result, state="idle", error=None)

    def _update(self, result: Optional[Dict[str, Any]], **defaults: Any) -> None:
        """Merge the handler's state over ``defaults`` (the handler's words win, except on which session runs)."""
        if result is not None and not isinstance(result, dict):
            raise TypeError(f"the handler returned {type(result).__name__}, not a state dict")
        bad = [name for name in result or {} if not isinstance(name, str) or not name or name == CURSOR_FIELD]
        if bad:
            raise TypeError(f"the handler's state uses a name it may not: {bad[0]!r}")
        self.state = {**self.state, **defaults, **(result or {}), "session": self.session}
        self._state_dirty = True

    def _end_expired_session(self) -> None:
        """Stop a session whose ``duration_s`` is over (works while Redis is away; the state is published later)."""
        if self.session is None or self._session_deadline is None or time.monotonic() < self._session_deadline:
            return
        ok, error, _state = self._run(make_command("stop", self.session))
        if not ok:
            LOG.error("could not end session %s at the end of its duration: %s", self.session, error)
            self.session = None
            self._session_deadline = None
            self._update(None, state="error", error=error)
