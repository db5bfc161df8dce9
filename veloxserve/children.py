"""Child processes die with the process that started them, so a `kill -9` leaves no orphans.

A worker of `serve --workers N`, a model container and a retrain's trainer are each started by a
process that may be killed -9 without a chance to stop them. An orphaned trainer would go on
writing a version nobody will promote (and compete for the cores with the one that replaces
it); an orphaned worker would hold the port. Linux's parent-death signal ends them with it.

The signal is sent when the *thread* that started the child exits, not the process: start
children from a thread that lives as long as they do (the retrainer's job thread waits on its
trainer; the supervisor's and the frontend's are the main or a long-lived thread).
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In the child (a `preexec_fn`, or first thing in its `main`): receive `sig` when the parent dies.
    Elsewhere than Linux it does nothing: orphans are then stopped by hand."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    except (AttributeError, OSError):
        pass
