"""Progress display for ``progress=True``: ``tqdm`` when it is installed, else a line on stderr."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, Callable


@contextlib.contextmanager
def progress_bar(
    progress: Any, total: int | None, unit: str = "rows"
) -> Iterator[Callable[[int], None] | None]:
    """A callable taking the count done so far — rows, or bytes for files (``unit``) — or
    ``None`` when ``progress`` is false; a callable ``progress`` is used as it is."""
    if not progress:
        yield None
        return
    if callable(progress):
        yield progress
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc="arraydrain")
        last = [0]

        def update(done: int) -> None:
            bar.update(done - last[0])
            last[0] = done

        try:
            yield update
        finally:
            bar.close()
        return

    def line(done: int) -> None:
        of = f"/{total}" if total is not None else ""
        sys.stderr.write(f"\rarraydrain: {done}{of} {unit}")
        sys.stderr.flush()

    try:
        yield line
    finally:
        sys.stderr.write("\n")
        sys.stderr.flush()
