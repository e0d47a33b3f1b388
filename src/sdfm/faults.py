"""Fault-injection points, for the reliability tests (layer L0).

With the environment variable ``SDFM_FAULT=NAME[@STEP][:ACTION]`` the process stops when it reaches
point ``NAME`` (at checkpoint step ``STEP`` when given): ``ACTION`` ``kill`` (default) sends itself
SIGKILL, as a power cut or the OOM killer would; ``enospc`` raises the OSError of a full disk. The
points sit between the steps of an atomic write (``checkpoint.written``, ``checkpoint.synced``,
``checkpoint.renamed``, ``checkpoint.latest``, ``atomic.written``). Unset, a point costs one
environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "SDFM_FAULT"


def point(name: str, step: int | None = None, path: str | None = None) -> None:
    """Stops here when ``SDFM_FAULT`` names this point (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, action = spec.partition(":")
    want, _, at = target.partition("@")
    if want != name or (at and (step is None or int(at) != step)):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    os.kill(os.getpid(), signal.SIGKILL)
