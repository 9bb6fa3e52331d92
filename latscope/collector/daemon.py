"""The collector daemon: one per observed host, in the foreground, for systemd or a supervisor.

It compiles the observer (and the flow-metrics program) once at start-up,
then loops: drain the ring buffer into the shipper, obey the Redis control
plane (start/stop a session, arm the time-sync responder), flush batches to
MariaDB, sweep incomplete samples, every ``sampling.interval`` snapshot the
flow metrics and publish counters - every tick, none of them able to stall
the others. Redis or MariaDB going away never
stops the measuring: the control loop backs off, the shipper spools to disk.

A running session is written to ``state_dir/session.json`` and removed when
it ends (stop command, duration over, SIGTERM); a daemon restarted after a
crash (by systemd or its supervisor) finds it and resumes the session. Every BPF attachment
belongs to this process's file descriptors, so on SIGTERM, on a crash and on
SIGKILL alike the kernel detaches everything of ours.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from ansible_collections.latscope.latscope.plugins.module_utils.control import (
    Agent, Command, command_from_dict, connect)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.records import PacketRecord
from latscope.collector.config import CollectorConfig
from latscope.collector.control_loop import ControlLoop
from latscope.collector.flowmetrics import FlowMetricsCollector
from latscope.collector.observer import Observer, host_scope
from latscope.collector.shipper import Shipper, connector
from latscope.collector.spool import Spool
from latscope.timesync.service import TimeSync

LOG = logging.getLogger("latscope.collector")
TICK_S = 0.1
# Counters that are a level now rather than a count since the session started.
GAUGES = frozenset({"live_entries", "flows.live_flows"})


@dataclass
class SessionRun:
    command: Command
    started_ns: int


class Collector:
    """The control loop's handler: owns the observer and the shipper."""

    def __init__(self, config: CollectorConfig, observer: Observer, shipper: Shipper,
                 flowmetrics: FlowMetricsCollector | None = None, timesync: TimeSync | None = None) -> None:
        self.config = config
        self.observer = observer
        self.shipper = shipper
        self.flowmetrics = flowmetrics
        self.timesync = timesync
        self.metric_rows = 0
        self._baseline: dict[str, int] = {}   # the kernel's counters when the session started
        self.run: SessionRun | None = None
        self.expired = 0
        self._next_publish = 0.0
        self._state_file = config.state_dir / "session.json"
        self.loop: ControlLoop | None = None   # set by run_daemon: where counters are published

    # --- Handler ---------------------------------------------------------------------------------

    def start(self, command: Command, resumed: bool = False) -> dict[str, Any]:
        age = time.time() - command.issued_at
        if not resumed and age > self.config.max_command_age_s:
            raise InputError("command.issued_at", f"is {age:.0f}s old, older than max_command_age_s "
                             f"({self.config.max_command_age_s:.0f}s): not started", command.issued_at)
        if command.hook_profile == "kprobe":
            raise InputError("command.hook_profile", "this host runs the tracepoint profile (no kprobes)", "kprobe")
        scope = host_scope(list(self.config.netns), list(self.config.interfaces))
        assert command.sampling is not None and command.flow is not None
        self.observer.configure(command.sampling, command.flow, scope)
        self.observer.start(command.session, self.config.host, self._on_record)
        self.observer.attach()
        if self.flowmetrics is not None:
            self.flowmetrics.configure(command.sampling, command.flow, scope.namespaces)
            try:
                self.flowmetrics.attach()
            except Exception:
                self.observer.disable()
                self.observer.detach()
                raise
        self.run = SessionRun(command, time.monotonic_ns())
        self.metric_rows = self.expired = 0
        self._baseline = {}
        self._baseline = self._kernel_counters()
        self.shipper.add_rows("hosts", [{"name": self.config.host, "kind": self.config.kind,
                                         "first_seen": time.time()}])
        self.shipper.add_rows("sessions", [{"id": command.session, "flow": command.flow.as_dict(),
                                            "sampling": command.sampling.as_dict(),
                                            "started_at": command.issued_at}])
        self._save_state(command)
        hooks = len(self.observer.attached) + (len(self.flowmetrics.attached) if self.flowmetrics else 0)
        LOG.info("session %s started: %d hooks attached", command.session, hooks)
        return {"hooks": hooks, "hook_profile": "tracepoint"}

    def stop(self, command: Command) -> dict[str, Any]:
        counters = self._finish()
        LOG.info("session %s stopped: %s", command.session, json.dumps(counters, sort_keys=True))
        return {"records": counters.get("emitted", 0)}

    def sync(self, command: Command) -> dict[str, Any]:
        """Arm the time-sync responder for the manager's probes (before or during a session)."""
        if self.timesync is None:
            raise InputError("command.op", "time sync is not configured on this host (no timesync section)",
                             command.op)
        return self.timesync.sync(command)

    # --- the session -------------------------------------------------------------------------------

    def _on_record(self, record: PacketRecord) -> None:
        self.shipper.add([record])

    def end(self) -> dict[str, int]:
        """End the running session here (daemon shutdown)."""
        return self._finish()

    def _finish(self) -> dict[str, int]:
        """Detach, drain, take the last flow metrics, publish the final counters; the session is over."""
        self.observer.disable()
        self.observer.detach()     # waits for programs in flight: nothing is emitted after this
        self.observer.poll(0)
        if self.flowmetrics is not None:
            self.flowmetrics.detach()   # final values: nothing changes them any more
            if self.run is not None:
                self._snapshot_metrics()
            self.flowmetrics.disable()
        if self.timesync is not None:
            self.timesync.disarm()
        counters = self.counters()
        if self.run is not None:
            self.shipper.add_counters(self.run.command.session, self.config.host, counters, time.monotonic_ns())
            self._publish(self.run.command.session, counters)
        self.shipper.flush()
        self.run = None
        self._state_file.unlink(missing_ok=True)
        return counters

    def _kernel_counters(self) -> dict[str, int]:
        """The programs' counters since this session started (the maps count from the daemon's start)."""
        values = self.observer.counters()
        if self.flowmetrics is not None:
            values.update({f"flows.{name}": value for name, value in self.flowmetrics.counters().items()})
        return {name: value if name in GAUGES else value - self._baseline.get(name, 0)
                for name, value in values.items()}

    def counters(self) -> dict[str, int]:
        values = self._kernel_counters()
        values["expired"] = self.expired
        lost_to_lru = (values["created"] - values["emitted"] - values["ringbuf_full"] - self.expired
                       - values["live_entries"])
        values["evicted"] = max(0, lost_to_lru)
        values.update({f"store_{name}": value for name, value in self.shipper.counters().items()
                       if isinstance(value, int)})
        if self.flowmetrics is not None:
            values["flows.rows"] = self.metric_rows
        if self.timesync is not None:
            values.update(self.timesync.counters())
        return values

    def _snapshot_metrics(self) -> None:
        """One flow-metrics row per flow of the session, queued for MariaDB."""
        if self.flowmetrics is None or self.run is None:
            return
        rows = self.flowmetrics.snapshot(self.run.command.session, self.config.host)
        self.shipper.add_metrics([row.schema_dict() for row in rows])
        self.metric_rows += len(rows)

    def _publish(self, session: str, counters: dict[str, int]) -> None:
        agent = self.loop.agent if self.loop is not None else None
        if agent is None:
            return
        try:
            agent.publish_counters(session, counters)
        except Exception as exc:  # noqa: BLE001 - Redis trouble is the control loop's to count
            LOG.debug("counters not published: %s", exc)

    def tick(self) -> None:
        """Periodic work: sweep, flush, publish counters (to Redis and, at session end, MariaDB)."""
        now = time.monotonic()
        if now < self._next_publish:
            return
        interval = self.run.command.sampling.interval if self.run and self.run.command.sampling else 1.0
        self._next_publish = now + interval
        if self.run is not None:
            self.expired += self.observer.sweep(int(self.config.entry_timeout_s * 1e9))
            self._snapshot_metrics()
            self._publish(self.run.command.session, self.counters())
        self.shipper.flush()

    # --- restart ------------------------------------------------------------------------------------

    def _save_state(self, command: Command) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(command.as_dict()))
        tmp.replace(self._state_file)

    def saved_session(self) -> Command | None:
        try:
            return command_from_dict(json.loads(self._state_file.read_text()), "session.json")
        except FileNotFoundError:
            return None
        except (ValueError, InputError) as exc:
            LOG.error("ignoring %s: %s", self._state_file, exc)
            self._state_file.unlink(missing_ok=True)
            return None


def run_daemon(config: CollectorConfig) -> int:
    """Run until SIGTERM/SIGINT; always detach and flush on the way out."""
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    observer = Observer(config.limits)
    LOG.info("observer compiled in %.1fs", observer.compile_seconds)
    flowmetrics = FlowMetricsCollector(config.flow_metrics) if config.flow_metrics is not None else None
    if flowmetrics is not None:
        LOG.info("flow metrics compiled in %.1fs", flowmetrics.compile_seconds)
    timesync = TimeSync(config.timesync) if config.timesync.enabled else None
    spool = Spool(config.spool_dir, max_bytes=config.spool_max_bytes)
    mysql = config.mysql
    shipper = Shipper(connector(mysql.host, mysql.port, mysql.user, mysql.password, mysql.database), spool)
    collector = Collector(config, observer, shipper, flowmetrics, timesync)

    def agent() -> Agent:
        return Agent(connect(config.redis), config.host, config.redis_prefix)

    resumed = collector.saved_session()
    active = None
    if resumed is not None:
        try:
            collector.start(resumed, resumed=True)
            active = resumed.session
            LOG.warning("resumed session %s after a restart", resumed.session)
        except InputError as exc:
            LOG.error("could not resume session %s: %s", resumed.session, exc)
    loop = ControlLoop(agent, collector, config.heartbeat_interval_s, hook_profile="tracepoint",
                       active_session=active)
    collector.loop = loop
    print(f"latscope collector {config.host}: ready (pid {os.getpid()})", flush=True)
    try:
        while not stopping:
            if collector.run is not None:
                observer.poll(int(TICK_S * 1000))
                loop.run_once(0)
            else:
                loop.run_once(TICK_S)
            collector.tick()
    finally:
        if collector.run is not None:
            collector.end()
        shipper.close()
        observer.close()
        if flowmetrics is not None:
            flowmetrics.close()
        if timesync is not None:
            timesync.close()
    LOG.info("stopped by signal %s", stopping[0] if stopping else "?")
    return 0


__all__ = ["Collector", "run_daemon"]
