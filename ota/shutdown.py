"""How long-running processes stop: the same clean way for Ctrl-C and `kill`."""

from __future__ import annotations

import signal


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl-C and `kill` both stop a long-running command the same clean way.

    SIGINT is handled even if it was ignored when we started: a shell script's background job
    (`ota dev &`) inherits SIGINT ignored, and then Ctrl-C or a supervisor's SIGINT would not stop
    it. SIGTERM would otherwise end the process at once, leaving `ota dev`'s children running."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
