"""Crash points for the reliability tests.

``ALFT_CRASH_AT=<name>`` makes the process kill itself with SIGKILL (no clean-up, no
finally blocks, exactly like kill -9 or a power cut) when it reaches the named point. Tests run
real commands with it set and then check that the project is still consistent. Unset (always,
outside tests), :func:`point` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

ENV = "ALFT_CRASH_AT"


def point(name: str) -> None:
    """Die here if ``ALFT_CRASH_AT`` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
