"""SIGTERM-aware stop flag.

Kubernetes sends SIGTERM before killing a preempted pod. ``install()`` turns that signal
into a flag the training loop polls between steps (``stop_requested()``); the loop then
writes a checkpoint and raises ``errors.Terminated`` (exit 143) so the retry resumes.
"""

from __future__ import annotations

import signal
import threading

_stop = threading.Event()
_installed = False


def _handler(signum: int, frame: object) -> None:  # noqa: ARG001
    _stop.set()


def install() -> bool:
    """Route SIGTERM to the stop flag. Only possible from the main thread; returns whether
    the handler is active."""
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _handler)
    _installed = True
    return True


def request_stop() -> None:
    """Ask the running loop to checkpoint and stop (what SIGTERM does)."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def reset() -> None:
    """Clear the flag (a new run in the same process)."""
    _stop.clear()
