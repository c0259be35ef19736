"""Worker set-up for a Dask ``LocalCluster`` that shapesgen starts: its workers leave
Ctrl-C to the client.

A terminal's Ctrl-C reaches every process of the foreground group, the LocalCluster's
worker processes too; each would stop with a traceback of its own on the command's
stderr, and a shard task it was running would be cut mid-write. With this module as
the workers' Dask preload (:data:`CONFIG`), they ignore SIGINT: the client cancels the
run and closes the cluster, which stops them (as the local engine's pool workers).
"""

from __future__ import annotations

import signal
from typing import Any

CONFIG: dict[str, Any] = {"distributed.worker.preload": [__name__]}  # dask.config.set(CONFIG) before LocalCluster


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in the worker process's main thread as the worker starts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by a fork server's start
