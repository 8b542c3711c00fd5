"""Draining into NumPy files (``to_npz``, ``to_npy_dir``): the fast path gathers straight into
the files, the general path writes through the engine's sink; a ``SIGTERM`` on the main thread
unwinds a write (its temporary files removed) before the process ends."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from . import _native
from ._checks import _check_items
from ._cudaref import cuda_helper
from ._fast import _choose, _fast_order
from ._leaves import host_bytes
from ._paths import _drain_general
from ._progress import progress_bar


def _to_files(loader, kind, path, compress, device, progress, items) -> None:
    ordinal = cuda_helper("_check_device")(device)
    _check_items(items, "auto")
    path = os.fspath(path)
    with _cleanup_on_sigterm():
        plan = _choose(loader, items)
        if plan is not None:
            leaves = plan.leaves
            sources = [
                (leaf.name, host_bytes(t, leaf.name)[0], leaf.engine, list(leaf.row_shape))
                for leaf, t in zip(leaves, plan.tensors)
            ]
            order, count = _fast_order(plan, loader)
            total = count * sum(leaf.row_bytes for leaf in leaves)
            with progress_bar(progress, total, "B") as bar:
                _native.gather_to_files(sources, count, order, kind, path, compress, bar)
            return
        _drain_general(
            loader,
            "auto",
            "cpu" if ordinal is None else device,
            ordinal,
            None,
            progress,
            (kind, path, compress),
            items,
            "U",
        )


class _Terminated(BaseException):
    """Raised by the temporary ``SIGTERM`` handler of a file write, to unwind it."""


@contextlib.contextmanager
def _cleanup_on_sigterm():
    """While a file write runs on the main thread of a program that leaves ``SIGTERM`` to its
    default action (ending the process on the spot), a ``SIGTERM`` unwinds the write first —
    its temporary files and the folders it made are removed — and then ends the process with
    ``SIGTERM`` as before. (``SIGINT`` is Python's ``KeyboardInterrupt``, which unwinds the
    same way.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        yield
        return
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
