"""``latscope observe``: run the packet observer in the foreground and print its records.

The BCC-tool way to look at what the kernel side sees, without Redis or MariaDB:
records go to stdout as JSON lines, counters to stderr at the end, a line
``attached`` to stderr once every hook is in place (scripts and tests wait for
it). It observes the namespace it runs in plus ``--netns`` paths.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import TextIO

from ansible_collections.latscope.latscope.plugins.module_utils.records import PacketRecord, record_to_dict
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import FlowFilter, Sampling
from latscope.collector.observer import Observer, ObserverLimits, compile_source, host_scope


def run_observe(sampling: Sampling, flow: FlowFilter, netns_paths: list[str], interfaces: list[str],
                seconds: float, host: str, session: str, limits: ObserverLimits,
                out: TextIO = sys.stdout, print_source: bool = False) -> int:
    if print_source:
        text, cflags = compile_source(limits)
        print("// cflags: " + " ".join(cflags), file=out)
        print(text, file=out)
        return 0
    scope = host_scope(netns_paths, interfaces)
    observer = Observer(limits)
    stopping = []
    previous = {sig: signal.signal(sig, lambda *_: stopping.append(1)) for sig in (signal.SIGTERM, signal.SIGINT)}
    written = 0

    def on_record(record: PacketRecord) -> None:
        nonlocal written
        out.write(json.dumps(record_to_dict(record), separators=(",", ":")) + "\n")
        written += 1

    try:
        observer.configure(sampling, flow, scope)
        observer.start(session, host, on_record)
        observer.attach()
        print(f"attached {len(observer.attached)} hooks (compiled in {observer.compile_seconds:.1f}s)",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
        while not stopping and time.monotonic() < deadline:
            observer.poll(100)
        observer.disable()
        observer.detach()     # waits for the runs in flight, so the counters below are final
        observer.poll(0)
        out.flush()
        counters = observer.counters()
        counters["written"] = written
        print(json.dumps({"counters": counters}), file=sys.stderr, flush=True)
    finally:
        observer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
