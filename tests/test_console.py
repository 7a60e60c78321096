"""The library logs and the CLI prints: notes on stdout as they are, warnings on stderr as one
`asl-sweep: warning:` line, on whatever sys.stdout/sys.stderr is at the time."""

from __future__ import annotations

import logging

from asl_sweep import console


def test_library_logs_reach_the_terminal_as_the_cli_shows_them(capsys):
    console.install()
    console.install()  # once per process, however often installed
    logging.getLogger("asl_sweep.ledger").warning("ledger %s: reconnected", "x.db")
    logging.getLogger("asl_sweep.agent").info("sweep s is paused")
    logging.getLogger("asl_sweep.agent").debug("not shown without --debug")
    out, err = capsys.readouterr()
    assert out == "sweep s is paused\n" and err == "asl-sweep: warning: ledger x.db: reconnected\n"
