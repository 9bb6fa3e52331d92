"""Time sync as the collector daemon and the manager run it.

Observer side: ``TimeSync`` owns the responder of one collector. The daemon's
``Collector.sync`` hands it the ``sync`` command; the first one compiles and
attaches the responder (XDP on the configured interface), every one re-arms it
for the command's session and returns the state the control loop publishes.
``disarm`` (session end) and ``close`` (daemon exit) detach it; the kernel
detaches it too if the daemon dies. Its settings are the ``timesync:`` section
of the collector's config (``settings_from_dict``), never the command: a
command only says *when*, the deployment says to whom and with which token.

Manager side: ``sync_round`` asks the observers over Redis to arm (the
``sync`` op), probes every one that acknowledged, fits the estimates, stores
them in ``clock_estimates`` and returns them - an observer that did not arm or
did not answer gets an estimate that says so (``synchronised`` false, with the
reason), never its previous one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ansible_collections.latscope.latscope.plugins.module_utils.clock import (
    DEFAULT_PORT, ClockEstimate, parse_token, unsynchronised)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from ansible_collections.latscope.latscope.plugins.module_utils.schema import clock_row, insert_sql
from latscope.timesync.prober import Prober, ProbeSettings, Target
from latscope.timesync.responder import MODES, Responder, ResponderSettings

LOG = logging.getLogger("latscope.timesync")
KNOWN = ("enabled", "interface", "manager_address", "token", "token_file", "port", "mode", "peer_netns",
         "local_address")


@dataclass(frozen=True)
class TimeSyncConfig:
    """The ``timesync:`` section of a collector's config."""

    enabled: bool
    responder: ResponderSettings | None = field(default=None, repr=False)


def settings_from_dict(raw: Any, source: str = "timesync") -> TimeSyncConfig:
    """Validate the ``timesync:`` section: ``interface``, ``manager_address``, ``token`` or ``token_file``
    (32 hex digits, file mode 0600 as the observer role writes it), ``port``, ``mode`` (auto, native,
    generic), ``peer_netns`` (namespace paths where a veth peer may be), ``local_address``."""
    if raw is None:
        return TimeSyncConfig(enabled=False)
    if not isinstance(raw, Mapping):
        raise InputError(source, "must be a mapping", type(raw).__name__)
    unknown = sorted(str(key) for key in raw if key not in KNOWN)
    if unknown:
        raise InputError(f"{source}.{unknown[0]}", f"unknown setting; known: {', '.join(KNOWN)}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InputError(f"{source}.enabled", "must be true or false", enabled)
    if not enabled:
        return TimeSyncConfig(enabled=False)
    for name in ("interface", "manager_address"):
        if not isinstance(raw.get(name), str) or not raw.get(name):
            raise InputError(f"{source}.{name}", "is required")
    if "token_file" in raw:
        path = Path(str(raw["token_file"]))
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"{source}.token_file", f"cannot be read ({exc.strerror})", str(path)) from None
        token = parse_token(text, f"{source}.token_file")
    elif "token" in raw:
        token = parse_token(raw["token"], f"{source}.token")
    else:
        raise InputError(f"{source}.token", "is required (or token_file)")
    peer_netns = raw.get("peer_netns", [])
    if isinstance(peer_netns, str):
        peer_netns = [peer_netns]
    if not isinstance(peer_netns, list) or not all(isinstance(p, str) and p.startswith("/") for p in peer_netns):
        raise InputError(f"{source}.peer_netns", "must be a list of absolute namespace paths", peer_netns)
    mode = raw.get("mode", "auto")
    if mode not in MODES:
        raise InputError(f"{source}.mode", f"must be one of {', '.join(MODES)}", mode)
    try:
        responder = ResponderSettings(interface=raw["interface"], manager_address=raw["manager_address"], token=token,
                                      port=require_int(f"{source}.port", raw.get("port", DEFAULT_PORT), 1, 65535),
                                      mode=mode, peer_netns=tuple(peer_netns), local_address=raw.get("local_address"))
    except InputError as exc:
        where = source + exc.field[len("timesync"):] if exc.field.startswith("timesync") else exc.field
        raise InputError(where, exc.reason, exc.value) from None
    return TimeSyncConfig(enabled=True, responder=responder)


class TimeSync:
    """The observer's side of time sync, for the collector daemon (``Collector.sync`` calls ``sync``)."""

    def __init__(self, config: TimeSyncConfig,
                 make_responder: Callable[[ResponderSettings], Responder] = Responder) -> None:
        self.config = config
        self._make = make_responder
        self.responder: Responder | None = None
        self.session: str | None = None
        self.armed_at = 0.0

    def sync(self, command: Any) -> dict[str, Any]:
        """Arm the responder for ``command.session`` (attach it the first time); return the state to publish."""
        if not self.config.enabled or self.config.responder is None:
            raise InputError("command.op", "time sync is not configured on this host (no timesync section)", "sync")
        if self.responder is None:
            self.responder = self._make(self.config.responder)
        if not self.responder.attached:
            self.responder.attach()
        else:
            self.responder.configure(enabled=True)
        self.session = command.session
        self.armed_at = time.time()
        state = self.responder.state()
        LOG.info("time sync armed for %s: %s", command.session, state)
        return {"timesync": "armed", "timesync_session": command.session, "timesync_port": state["port"],
                "timesync_address": state["address"], "timesync_mode": state["mode"],
                "timesync_interface": state["interface"]}

    def disarm(self) -> dict[str, Any]:
        """Detach the responder (session over); its counters stay readable until ``close``."""
        if self.responder is not None:
            self.responder.detach()
        self.session = None
        return {"timesync": "idle"}

    def counters(self) -> dict[str, int]:
        """The responder's counters as ``timesync.<name>`` (control.COUNTER_RE names)."""
        if self.responder is None:
            return {}
        return {f"timesync.{name}": value for name, value in self.responder.counters().items()}

    def close(self) -> None:
        if self.responder is not None:
            self.responder.close()
            self.responder = None


# --- the manager's side --------------------------------------------------------------------------

def store_estimates(connection: Any, session: str, estimates: Iterable[ClockEstimate]) -> int:
    """INSERT IGNORE the estimates into clock_estimates (validated by ``schema.clock_row``); return the count."""
    rows = [clock_row(estimate.row(session), f"estimates[{index}]") for index, estimate in enumerate(estimates)]
    if rows:
        with connection.cursor() as cursor:
            cursor.executemany(insert_sql("clock_estimates"), rows)
        connection.commit()
    return len(rows)


def targets_from_acks(acks: Mapping[str, Any], addresses: Mapping[str, str]) -> tuple[list[Target], dict[str, str]]:
    """Observers to probe (those whose sync was acknowledged) and why the others are not probed."""
    targets: list[Target] = []
    refused: dict[str, str] = {}
    for host, ack in acks.items():
        if not getattr(ack, "ok", False):
            refused[host] = f"sync not acknowledged: {getattr(ack, 'error', '') or getattr(ack, 'status', 'no answer')}"
            continue
        state = getattr(ack, "state", {}) or {}
        address = state.get("timesync_address") or addresses.get(host)
        if not address:
            refused[host] = "its ack gave no responder address"
            continue
        targets.append(Target(host, str(address)))
    return targets, refused


def sync_round(prober: Prober, hosts: Mapping[str, str], session: str, settings: ProbeSettings | None = None,
               controller: Any = None, connection: Any = None, ack_timeout_s: float = 10.0) -> dict[str, ClockEstimate]:
    """One round for ``hosts`` ({name: responder address}): arm over Redis (when a ``controller`` is
    given), probe, fit, store (when a ``connection`` is given). Every host gets an estimate."""
    refused: dict[str, str] = {}
    if controller is not None:
        acks = controller.sync(list(hosts), session, timeout_s=ack_timeout_s)
        targets, refused = targets_from_acks(acks, hosts)
    else:
        targets = [Target(host, address) for host, address in hosts.items()]
    estimates = prober.round(targets, settings) if targets else {}
    now = time.monotonic_ns()
    for host, why in refused.items():
        estimates[host] = unsynchronised(host, why, now)
    if connection is not None:
        store_estimates(connection, session, estimates.values())
    return estimates


__all__ = ["TimeSync", "TimeSyncConfig", "settings_from_dict", "store_estimates", "sync_round", "targets_from_acks"]
