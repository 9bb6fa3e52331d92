"""Suite-wide rule: a skipped test is not a pass, so any skip fails the run."""

from __future__ import annotations

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        reporter.write_line(f"{skipped} test(s) skipped: this suite counts a skip as a failure", red=True)
        session.exitstatus = 1
