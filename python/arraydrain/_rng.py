"""Random-generator draws whose values an epoch does not use, run on a thread while the engine
gathers (so that every generator ends where one real epoch leaves it)."""

from __future__ import annotations

import contextlib
import threading


def _run_all(draws: list) -> None:
    for draw in draws:
        draw()


@contextlib.contextmanager
def _alongside(draws: list):
    """Runs ``draws`` (generator advances whose values are unused) on a thread while the body
    gathers with the GIL released; waits for them on the way out, whatever happens, so the
    generators are where one epoch leaves them when ``drain`` returns."""
    if not draws:
        yield
        return
    failed: list = []

    def run():
        try:
            _run_all(draws)
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            failed.append(e)

    thread = threading.Thread(target=run, name="arraydrain-rng")
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]
