"""Ctrl-C as a flag that a training loop checks between iterations, so it can snapshot first.

Shared by every Python-driven Caffe training loop (``defense.train.solver``, the generative
attacks of ``attacks.generative``).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Dict, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def sigint_flag() -> Iterator[Dict[str, bool]]:
    """Yield ``{"stop": False}``; the first Ctrl-C sets ``stop``, a second raises KeyboardInterrupt.

    Outside the main thread (where signal handlers cannot be set) the flag never turns on.
    """
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        flag["stop"] = True
        log.warning("Ctrl-C: finishing this iteration, then writing a snapshot")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)
