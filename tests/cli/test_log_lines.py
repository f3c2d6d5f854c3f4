"""vsrq's log records reach the user as one stderr line each: warnings and notes."""

import logging

from vsrq.cli import _install_warning_lines


def test_log_records_become_one_line_each_once(capsys) -> None:
    _install_warning_lines()
    log = logging.getLogger("vsrq.somewhere")
    log.info("timing things\nsecond line dropped")
    log.info("timing things")
    log.warning("something odd")
    log.debug("not shown")
    err = capsys.readouterr().err.splitlines()
    assert err == ["vsrq: note: timing things", "vsrq: warning: something odd"]
