"""How the library reports: the ``yoloprune`` logger. Progress and results are INFO records (``say``), marked for
standard output or standard error; problems are warnings. A library caller sees them by configuring logging as
usual; the command line and the benchmarks install ``Console``, which writes each record to the stream it is
marked for, looked up when it is written (so a redirected ``sys.stdout`` receives it)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("yoloprune")


def say(message: str, err: bool = False) -> None:
    """Report one line of progress or result (``err``: meant for standard error, beside the output)."""
    log.info(message, extra={"stream": "stderr" if err else "stdout"})


class Console(logging.Handler):
    """Writes each record's message to the stream it is marked for (warnings and errors: standard error)."""

    def emit(self, record: logging.LogRecord) -> None:
        out = getattr(record, "stream", "stderr" if record.levelno >= logging.WARNING else "stdout")
        stream = sys.stdout if out == "stdout" else sys.stderr
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except BrokenPipeError:
            raise
        except Exception:  # noqa: BLE001 - a closed stream must not stop the work
            self.handleError(record)


def to_console() -> None:
    """Send the library's reports to the console (once per process)."""
    if not any(isinstance(h, Console) for h in log.handlers):
        log.addHandler(Console())
    log.setLevel(logging.INFO)
    log.propagate = False


__all__ = ["Console", "log", "say", "to_console"]
