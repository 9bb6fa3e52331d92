# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print, as JSON, what the store holds for a session: raw sample rows per host, the per-host sample counts the
analysis materialised (analysis_counts), how many network namespaces each host's paths cross (analysis_paths),
and the most bytes a flow sent (flow_metrics). Runs on the manager with LatScope's Python and connects the way
``latscope report`` does, from an analysis config file (password_file, never printed).

    python stored_rows.py SESSION CONFIG
"""

from __future__ import annotations

import json
import sys
from contextlib import closing

from latscope.analysis.commands import connect


def main(session: str, config: str) -> int:
    with closing(connect(config)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT host, COUNT(*) FROM packet_samples WHERE session_id = %s GROUP BY host", (session,))
        samples = {host: int(count) for host, count in cursor.fetchall()}
        cursor.execute("SELECT host, value FROM analysis_counts WHERE session_id = %s AND source = 'analysis' "
                       "AND name = 'samples'", (session,))
        analysed = {host: int(value) for host, value in cursor.fetchall()}
        cursor.execute("SELECT COUNT(*) FROM analysis_packets WHERE session_id = %s", (session,))
        packets = int(cursor.fetchone()[0])
        cursor.execute("SELECT COUNT(*) FROM analysis_layers WHERE session_id = %s", (session,))
        layers = int(cursor.fetchone()[0])
        cursor.execute("SELECT host, COUNT(DISTINCT netns) FROM analysis_paths WHERE session_id = %s GROUP BY host",
                       (session,))
        netns = {host: int(count) for host, count in cursor.fetchall()}
        cursor.execute("SELECT COALESCE(MAX(bytes_sent), 0) FROM flow_metrics WHERE session_id = %s", (session,))
        bytes_sent = int(cursor.fetchone()[0])
    print(json.dumps({"samples": samples, "analysed": analysed, "analysis_packets": packets,
                      "analysis_layers": layers, "netns": netns, "bytes_sent": bytes_sent}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
