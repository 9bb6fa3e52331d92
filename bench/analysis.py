"""Materialisation speed: N packet samples of a two-flow session, analysed in SQL on the lab's MariaDB.

  .venv/bin/python bench/analysis.py [--samples 1000000] [--container-share 0.5] [--lab PREFIX]

Without --lab it brings up a lab of its own (prefix ``anb``, 198.19.246.0/23, one host: only the
manager's MariaDB is used) and removes it at the end whatever happens.

The rows are generated in SQL (a numbers table and one INSERT ... SELECT per record layer), shaped
like the lab's real records: per sampled byte four records - the sender's data TX record, the
receiver's data RX record, the receiver's ACK TX record, the sender's ACK RX record - for a host flow
(host1 -> host2: 5, 5, 4 and 3 stamps) and a container flow (host1-c1 -> host2: 11, 5, 4 and 9 stamps,
through the container's veth, the host's bridge and uplink). Sequence keys wrap (2**32 / 65536 keys
per wrap), host2's clock is 3.7 ms ahead and its clock estimates say so, every layer has jitter.

Printed: generation time, materialisation time and samples/s, the re-run (replacement) time, and
the baseline measured in the same run: one plain pass over the session's raw rows (copying its
samples and their stamps into a temporary table), so the figure reads as "N raw passes"; and the
floor: the parts any materialisation must do, each timed alone - reading the stamps, writing the
per-packet breakdown, one sort of its per-layer values (what exact percentiles need at least).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from contextlib import closing
from pathlib import Path

import pymysql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ansible_collections.latscope.latscope.plugins.module_utils import analysis_sql  # noqa: E402
from ansible_collections.latscope.latscope.plugins.module_utils.records import LAYER_IDS  # noqa: E402
from ansible_collections.latscope.latscope.plugins.module_utils.schema import COLUMNS, migrate  # noqa: E402

SESSION = "bench-analysis"
OWN_LAB = {"prefix": "anb", "hosts": 1, "containers": 0, "range": "198.19.246.0/23"}
T0 = 5_000_000_000_000          # host1's clock at the first sample
STEP_NS = 20_000                # one sampled byte every 20 us per flow
HOST2_OFFSET_NS = 3_700_000     # host2's clock minus the manager's (= host1's)
SIZE = 65536
H1, H2, C1 = 4026531840, 4026532100, 4026532200     # namespace cookies
ADDR = {"host1": 3323117579, "host2": 3323117580, "c1": 3323117826}   # 198.19.200.11/.12, 198.19.201.2

# (role, host, direction, kind, [(layer, mean gap to the previous stamp ns, jitter ns, ifindex, netns)])
# The first stamp's gap is from the sample's origin (the sender's app_send).
HOST_FLOW = [
    ("dtx", "host1", 0, 0, [("app_send", 0, 0, 0, H1), ("tcp_xmit", 30_000, 40_000, 0, H1), ("ip_out", 1_000, 800, 0, H1),
                            ("dev_queue", 1_500, 900, 2, H1), ("dev_xmit", 900, 500, 2, H1)]),
    ("drx", "host2", 1, 0, [("dev_rx", 2_000, 1_500, 2, H2), ("netif_rx", 1_500, 900, 2, H2), ("tcp_rx", 1_000, 700, 0, H2),
                            ("app_copy", 20_000, 30_000, 0, H2), ("app_recv", 3_000, 2_000, 0, H2)]),
    ("atx", "host2", 0, 1, [("tcp_xmit", 5_000, 8_000, 0, H2), ("ip_out", 1_200, 700, 0, H2),
                            ("dev_queue", 1_800, 1_000, 2, H2), ("dev_xmit", 800, 500, 2, H2)]),
    ("arx", "host1", 1, 1, [("dev_rx", 2_000, 1_500, 2, H1), ("netif_rx", 1_500, 900, 2, H1), ("tcp_rx", 1_000, 700, 0, H1)]),
]
CONTAINER_FLOW = [
    ("dtx", "host1", 0, 0, [("app_send", 0, 0, 0, C1), ("tcp_xmit", 30_000, 40_000, 0, C1), ("ip_out", 1_000, 800, 0, C1),
                            ("dev_queue", 1_400, 900, 2, C1), ("dev_xmit", 1_000, 500, 2, C1),
                            ("dev_rx", 1_000, 600, 4, H1), ("netif_rx", 1_500, 800, 4, H1),
                            ("dev_rx", 1_600, 800, 3, H1), ("netif_rx", 800, 400, 3, H1),
                            ("dev_queue", 1_900, 900, 2, H1), ("dev_xmit", 900, 500, 2, H1)]),
    HOST_FLOW[1],
    HOST_FLOW[2],
    ("arx", "host1", 1, 1, [("dev_rx", 2_000, 1_500, 2, H1), ("netif_rx", 1_900, 900, 2, H1),
                            ("dev_queue", 1_600, 800, 3, H1), ("dev_xmit", 700, 400, 3, H1),
                            ("dev_queue", 1_100, 600, 4, H1), ("dev_xmit", 600, 300, 4, H1),
                            ("dev_rx", 600, 300, 2, C1), ("netif_rx", 1_000, 500, 2, C1), ("tcp_rx", 1_300, 700, 0, C1)]),
]


def jitter(stamp: int, spread: int) -> str:
    """A deterministic pseudo-random term in [0, spread) for key n and stamp position."""
    if not spread:
        return "0"
    return f"MOD(n.n * 2654435761 + {stamp * 40503 + 17}, {spread})"


def generate(cursor, keys_host: int, keys_container: int) -> int:
    """Insert the session's rows; return how many packet samples."""
    cursor.execute("DROP TEMPORARY TABLE IF EXISTS bench_digits")
    cursor.execute("CREATE TEMPORARY TABLE bench_digits (d INT NOT NULL PRIMARY KEY) ENGINE=InnoDB")
    cursor.execute("INSERT INTO bench_digits VALUES " + ",".join(f"({d})" for d in range(10)))
    cursor.execute("CREATE TABLE IF NOT EXISTS bench_numbers (n INT NOT NULL PRIMARY KEY) ENGINE=InnoDB")
    cursor.execute("TRUNCATE TABLE bench_numbers")
    most = max(keys_host, keys_container)
    digits = len(str(max(most - 1, 1)))
    joins = " CROSS JOIN ".join(f"bench_digits d{i}" for i in range(digits))
    value = " + ".join(f"d{i}.d * {10 ** i}" for i in range(digits))
    cursor.execute(f"INSERT INTO bench_numbers SELECT {value} FROM {joins} WHERE {value} < {most}")
    samples = 0
    for flow_no, (templates, keys, source) in enumerate(((HOST_FLOW, keys_host, "host1"),
                                                        (CONTAINER_FLOW, keys_container, "c1"))):
        if not keys:
            continue
        sport = 40000 + flow_no
        dport = 5201 + flow_no
        src, dst = ADDR[source], ADDR["host2"]
        origin = {}    # role -> SQL of the time of the role's first stamp's predecessor
        for role_no, (role, host, direction, kind, stamps) in enumerate(templates):
            uid = f"(n.n * 8 + {flow_no * 4 + role_no} + 1000000000)"
            flow = (src, dst, sport, dport) if kind == 0 else (dst, src, dport, sport)
            base = f"({T0} + n.n * {STEP_NS})"
            start = {"dtx": base, "drx": origin.get("dtx_last"), "atx": origin.get("drx_tcp_rx"),
                     "arx": origin.get("atx_last")}[role]
            offset = HOST2_OFFSET_NS if host == "host2" else 0
            times, current = [], start
            for index, (layer, gap, spread, _ifindex, _netns) in enumerate(stamps):
                current = f"({current} + {gap} + {jitter(role_no * 16 + index, spread)})"
                times.append(current)
            # the next role starts from these (host1 timebase; host2's offset is added when stored)
            if role == "dtx":
                origin["dtx_last"] = times[-1]
            if role == "drx":
                origin["drx_tcp_rx"] = times[[s[0] for s in stamps].index("tcp_rx")]
            if role == "atx":
                origin["atx_last"] = times[-1]
            first = f"({times[0]} + {offset})"
            key = f"MOD(n.n * {SIZE}, 4294967296)"
            cursor.execute(
                f"INSERT INTO packet_samples ({', '.join(COLUMNS['packet_samples'])}) "
                f"SELECT {uid}, '{SESSION}', '{host}', {direction}, {kind}, {flow[0]}, {flow[1]}, {flow[2]}, {flow[3]}, "
                f"{key}, {key}, 1448, 0, {first}, {len(stamps)}, 1 FROM bench_numbers n WHERE n.n < {keys}")
            samples += cursor.rowcount
            for index, (layer, _gap, _spread, ifindex, netns) in enumerate(stamps):
                cursor.execute(
                    f"INSERT INTO packet_stamps ({', '.join(COLUMNS['packet_stamps'])}) "
                    f"SELECT {uid}, {index}, {LAYER_IDS[layer]}, {times[index]} + {offset}, {ifindex}, {netns} "
                    f"FROM bench_numbers n WHERE n.n < {keys}")
    span = (max(keys_host, keys_container) * STEP_NS) // 1_000_000_000 + 2
    for host, offset in (("host1", 0), ("host2", HOST2_OFFSET_NS)):
        for second in range(span):
            # at_ns is manager time (clock.ClockEstimate): one estimate per second of the session
            cursor.execute("INSERT INTO clock_estimates VALUES (%s, %s, %s, %s, 0, 250, 40, 0, 1)",
                           (SESSION, host, T0 + second * 1_000_000_000, offset))
        cursor.execute("INSERT INTO drop_counters VALUES (%s, %s, 'ringbuf_full', %s, 0)", (SESSION, host, T0))
    cursor.execute("INSERT INTO sessions VALUES (%s, '{}', '{}', UTC_TIMESTAMP(6), NULL)", (SESSION,))
    cursor.execute("DROP TABLE bench_numbers")
    return samples


def baseline(cursor) -> float:
    """One plain pass over the session's raw rows: its samples and stamps copied into a temporary table."""
    cursor.execute("DROP TEMPORARY TABLE IF EXISTS bench_copy")
    cursor.execute("CREATE TEMPORARY TABLE bench_copy (uid BIGINT UNSIGNED NOT NULL, idx TINYINT UNSIGNED NOT NULL, "
                   "layer SMALLINT UNSIGNED NOT NULL, ts_ns BIGINT UNSIGNED NOT NULL, host VARCHAR(128) NOT NULL, "
                   "PRIMARY KEY (uid, idx)) ENGINE=InnoDB")
    started = time.monotonic()
    cursor.execute("INSERT INTO bench_copy SELECT s.uid, t.idx, t.layer, t.ts_ns, s.host FROM packet_samples s "
                   "JOIN packet_stamps t ON t.sample_uid = s.uid WHERE s.session_id = %s", (SESSION,))
    seconds = time.monotonic() - started
    cursor.execute("DROP TEMPORARY TABLE bench_copy")
    return seconds


def read_floor(cursor) -> float:
    """The least reading any materialisation does: the session's stamps with their records (a bare join, COUNT/SUM)."""
    started = time.monotonic()
    cursor.execute("SELECT COUNT(*), SUM(t.ts_ns) FROM packet_samples s JOIN packet_stamps t ON t.sample_uid = s.uid "
                   "WHERE s.session_id = %s", (SESSION,))
    cursor.fetchall()
    return time.monotonic() - started


def write_and_rank_floor(cursor) -> dict[str, float]:
    """The least writing and ranking (after a run): the per-packet breakdown's rows inserted once more
    (copied, nothing computed) and one sort of all its per-layer values, the least exact nearest-rank
    percentiles need."""
    parts = {}
    cursor.execute("DROP TABLE IF EXISTS bench_floor")
    cursor.execute("CREATE TABLE bench_floor LIKE analysis_packets")
    started = time.monotonic()
    cursor.execute("INSERT INTO bench_floor SELECT * FROM analysis_packets WHERE session_id = %s", (SESSION,))
    parts["write"] = time.monotonic() - started
    cursor.execute("DROP TABLE bench_floor")
    values = " UNION ALL ".join(f"SELECT {column}_ns AS v FROM analysis_packets WHERE session_id = %(session)s "
                                f"AND {column}_ns IS NOT NULL" for column in analysis_sql.packet_columns())
    started = time.monotonic()
    cursor.execute(f"SELECT COUNT(*) FROM (SELECT ROW_NUMBER() OVER (ORDER BY v) AS rn FROM ({values}) l) w",
                   {"session": SESSION})
    cursor.fetchall()
    parts["rank"] = time.monotonic() - started
    return parts


def scratch_database(lab: str, defaults_file: str):
    """A scratch database and user on a MariaDB we are root of: (connect, drop).

    ``defaults_file`` names a server reached over its socket (any MariaDB on this machine); otherwise
    lab ``lab``'s MariaDB is used, over TCP at the manager's address as the lab does.
    """
    from latscope.lab import services
    from latscope.lab.settings import STATE_ROOT, LabSettings, plan

    if defaults_file:
        config, address = Path(defaults_file), None
    else:
        root = STATE_ROOT / f"lab-{lab}"
        try:
            state = json.loads((root / "lab.json").read_text())
        except FileNotFoundError:
            raise SystemExit(f"no lab {lab!r} is up: run `latscope lab up --prefix {lab}` first") from None
        address = plan(LabSettings.from_dict(state["settings"])).manager.address
        config = root / "mariadb" / "my.cnf"
    socket = next((line.split("=", 1)[1].strip() for line in config.read_text().splitlines()
                   if line.strip().startswith("socket")), None)
    name, user, password = f"ls_bench_{secrets.token_hex(4)}", f"lsb_{secrets.token_hex(4)}", secrets.token_hex(16)
    where = "%" if address else "localhost"
    services.mariadb_sql(config, f"CREATE DATABASE `{name}`;\nCREATE USER '{user}'@'{where}' IDENTIFIED BY '{password}';\n"
                                 f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'{where}';\n")

    def connect():
        where_to = {"host": address, "port": 3306} if address else {"unix_socket": socket}
        return pymysql.connect(**where_to, user=user, password=password, database=name, autocommit=False,
                               read_timeout=900, write_timeout=900)

    def drop():
        services.mariadb_sql(config, f"DROP DATABASE IF EXISTS `{name}`;\nDROP USER IF EXISTS '{user}'@'{where}';\n")
    return connect, drop


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000, help="packet samples to generate (default 1000000)")
    parser.add_argument("--container-share", type=float, default=0.5,
                        help="share of sampled bytes on the container flow (default 0.5)")
    parser.add_argument("--lab", default="", help="use this lab's MariaDB (default: a lab of its own, removed after)")
    parser.add_argument("--defaults-file", default="", help="use this MariaDB instead (a my.cnf whose [client] socket "
                        "root can use, e.g. a lab's mariadb/my.cnf)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (and say its name)")
    parser.add_argument("--generate-only", action="store_true", help="generate the rows, analyse nothing (with --keep)")
    args = parser.parse_args(argv)
    keys = args.samples // 4
    keys_container = int(round(keys * args.container_share))
    keys_host = keys - keys_container
    own = not args.lab and not args.defaults_file
    if own:
        from latscope.lab import lab as lab_ops
        from latscope.lab.settings import LabSettings

        lab_ops.up(LabSettings.from_dict(OWN_LAB))
    try:
        return run(args, keys_host, keys_container)
    finally:
        if own:
            lab_ops.down(OWN_LAB["prefix"])


def run(args, keys_host: int, keys_container: int) -> int:
    connect, drop = scratch_database(args.lab or OWN_LAB["prefix"], args.defaults_file)
    try:
        with closing(connect()) as connection:
            migrate(connection)
            with connection.cursor() as cursor:
                started = time.monotonic()
                samples = generate(cursor, keys_host, keys_container)
                connection.commit()
                generated = time.monotonic() - started
                cursor.execute("SELECT COUNT(*) FROM packet_stamps")
                stamps = cursor.fetchone()[0]
                cursor.execute("ANALYZE TABLE packet_samples, packet_stamps")
                cursor.fetchall()
                base = baseline(cursor)
                if args.generate_only:
                    cursor.execute("SELECT DATABASE()")
                    print(f"generated {samples} samples ({stamps} stamps) in {generated:.1f}s into {cursor.fetchone()[0]}; "
                          f"baseline {base:.2f}s")
                    return 0
                least = {"read": read_floor(cursor)}
            first = analysis_sql.materialise(connection, SESSION)
            again = analysis_sql.materialise(connection, SESSION)
            with connection.cursor() as cursor:
                for statement in analysis_sql.SESSION_SETTINGS:   # the temporary-table sizes the analysis runs with
                    cursor.execute(statement)
                least.update(write_and_rank_floor(cursor))
                cursor.execute("SELECT COUNT(*) FROM analysis_packets WHERE session_id = %s", (SESSION,))
                rows = cursor.fetchone()[0]
            connection.commit()
    finally:
        if not args.keep:
            drop()
    print(f"generated {samples} samples ({stamps} stamps; {keys_host} host-flow and {keys_container} container-flow "
          f"sampled bytes x 4 records) in {generated:.1f}s")
    print(f"baseline: one pass over the raw rows (samples + stamps copied) {base:.2f}s")
    for label, result in (("materialise", first), ("re-run (replace)", again)):
        print(f"{label}: {result.seconds:.2f}s = {samples / result.seconds:,.0f} samples/s "
              f"= {result.seconds / base:.1f}x baseline; {result.data_pairs} data pairs, {result.ack_pairs} ACK pairs, "
              f"{result.rtt_samples} RTT samples ({result.closure_ok} closed within 5%)")
    slow = sorted(first.steps.items(), key=lambda item: -item[1])[:8]
    print("slowest steps (first run): " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in slow))
    print(f"analysis_packets rows: {rows}")
    print(f"floor (each part alone): read the stamps {least['read']:.2f}s + write the breakdown {least['write']:.2f}s "
          f"+ rank its layer values once {least['rank']:.2f}s = {sum(least.values()):.2f}s "
          f"= {sum(least.values()) / base:.1f}x baseline (target 10 s)")
    return 0 if first.seconds <= 10.0 and rows == first.data_pairs + first.ack_pairs else 1


if __name__ == "__main__":
    sys.exit(main())
