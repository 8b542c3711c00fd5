"""``out=``: the caller's arrays to refill, checked against the drain's structure and for
overlaps (with each other and with the data being drained)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _native
from ._errors import DrainValueError
from ._leaves import Leaf, flatten, same_structure


def _owner(array) -> Any | None:
    """The engine buffer (``_native.Buffer``) an array views, if any (via its ``base`` chain)."""
    b = getattr(array, "base", None)
    while b is not None and not isinstance(b, _native.Buffer):
        b = getattr(b, "base", None)
    return b


def _check_overlaps(outs, reads, leaves) -> None:
    """``out=`` arrays may overlap neither each other nor the data being drained."""
    for i, (o, leaf) in enumerate(zip(outs, leaves)):
        if any(np.may_share_memory(o, r) for r in reads):
            raise DrainValueError(f"out= leaf {leaf.name!r} overlaps the data being drained")
        if any(np.may_share_memory(o, p) for p in outs[:i]):
            raise DrainValueError(f"out= leaf {leaf.name!r} overlaps another out= leaf")


def _out_leaves(out, structure_or_none, leaves: list[Leaf]):
    """The leaves of ``out=``, checked against the drain's structure (a list for the fast
    path, or a flatten structure)."""
    if isinstance(structure_or_none, list):
        if not isinstance(out, (list, tuple)) or len(out) != len(leaves):
            raise DrainValueError(
                f"out= must be the previous result: a list of {len(leaves)} arrays"
            )
        return list(out)
    structure, got = flatten(out)
    if not same_structure(structure, structure_or_none):
        raise DrainValueError("out= does not have the structure of a batch of this loader")
    return [x for _, x in got]
