"""Shard folders of a distributed run (``arraydrain convert --distributed``), read back as one
dataset through the engine's own check and merge (the checks of ``arraydrain merge``)."""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from . import _native
from ._errors import DrainTypeError


def load_shards(
    path: os.PathLike[str] | str,
    *,
    mmap: bool = True,
    keep_padding: bool = False,
    out_dir: os.PathLike[str] | str | None = None,
) -> dict[str, np.ndarray]:
    """The shard folder ``path`` written by ``arraydrain convert --distributed``, as one dataset:
    a dict of column name → NumPy array (in the manifest's column order) holding exactly
    ``x[sampler order]`` for the union of the ranks — what ``arraydrain merge`` writes — with the
    ``DistributedSampler``'s padding (the rows it repeats for an even split) removed unless
    ``keep_padding=True``.

    Every part is checked first, as ``arraydrain merge`` checks it: present, finished, of the
    manifest's run, claimed by one folder only, each file a regular file inside the folder (no
    symbolic link is followed) of its recorded size, dtype, shape and CRC-32. Any problem raises
    one error listing them, and nothing is returned. The arrays are read from the very files
    that were checked (or written), through their open descriptors: nothing is reopened by path,
    so a folder swapped in meanwhile changes nothing.

    **Where the arrays live.** The ranks' rows are interleaved (row ``i`` of rank ``r``'s part is
    position ``i·world_size + r`` of the global order), so with more than one rank the columns
    are merged into ``.npy`` files, streamed from the memory-mapped parts:

    - ``out_dir`` given: into ``out_dir/NAME.npy`` (the folder is created if needed), which stay
      there; with ``mmap=True`` the arrays are read-only memory maps of those files.
    - ``out_dir=None, mmap=True``: into a temporary folder (``tempfile.gettempdir()``, i.e.
      ``$TMPDIR``), mapped read-only, then the folder is removed: the mappings keep the data
      alive and its disk space is freed when the arrays are garbage-collected. For data larger
      than RAM, mind that ``$TMPDIR`` may be a RAM-backed ``tmpfs``: pass ``out_dir`` on a disk.
    - ``mmap=False``: the arrays are read into memory (``out_dir=None``: from a temporary
      folder removed at once).

    With one rank (and ``out_dir=None``, ``mmap=True``) the part's own files are already in
    sampler order and are mapped in place, read-only, after the check.

    Args:
        path: the shard folder (holding ``manifest.json`` and the ``part-…`` folders).
        mmap: return read-only memory maps instead of arrays in memory.
        keep_padding: keep the rows ``DistributedSampler`` repeated to pad its shards.
        out_dir: where to write the merged ``.npy`` files (kept); ``None`` for a temporary folder.

    Raises:
        DrainValueError: the manifest is unusable, or the parts do not match it (missing,
            truncated, corrupt, unfinished, of another run, a rank claimed twice), listed in the
            message.
        DrainOSError: a file cannot be read or written (a missing ``manifest.json`` included).
        DrainTypeError: an argument of the wrong type.
    """
    src = _path(path, "path")
    for name, flag in (("mmap", mmap), ("keep_padding", keep_padding)):
        if not isinstance(flag, bool):
            raise DrainTypeError(f"{name} must be a bool, not {type(flag).__name__}")
    mode = "r" if mmap else None
    if out_dir is not None:
        dest = _path(out_dir, "out_dir")
        return _load(_native.merge_shards(src, dest, keep_padding), mode)
    if mmap and _native.shard_world_size(src) == 1:
        # One rank: its part is the merged output; checked (as merge would), then mapped from
        # the checked files. The world size is checked again on the set that was checked.
        names, fds, merged_rows, padded_rows = _native.check_shards(src)
        if len(fds) == 1:
            rows = padded_rows if keep_padding else merged_rows
            arrays = _load([(n, fd, p) for n, (fd, p) in zip(names, fds[0])], mode)
            return {n: a[:rows] for n, a in arrays.items()}
        _close_all(fd for part in fds for fd, _ in part)
    tmp = tempfile.mkdtemp(prefix="arraydrain-shards-")
    try:
        return _load(_native.merge_shards(src, tmp, keep_padding), mode)
    finally:
        # Memory maps outlive their files' names (POSIX); arrays read in memory need neither.
        shutil.rmtree(tmp, ignore_errors=True)


def _path(value: Any, what: str) -> str:
    try:
        return os.fspath(value)
    except TypeError:
        raise DrainTypeError(
            f"{what} must be a str or os.PathLike, not {type(value).__name__}"
        ) from None


def _close_all(fds: Any) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _load(files: list[tuple[str, int, Any]], mode: str | None) -> dict[str, np.ndarray]:
    """Each ``(name, fd, path)`` as an array read from the open file ``fd`` (closed here;
    ``path`` is only shown, as a map's ``filename``: nothing is reopened by path)."""
    out: dict[str, np.ndarray] = {}
    pending = [fd for _, fd, _ in files]
    try:
        for i, (name, fd, path) in enumerate(files):
            pending[i] = -1
            with os.fdopen(fd, "rb") as f:
                array = _read_npy(f, mode)
            if isinstance(array, np.memmap):
                array.filename = os.path.abspath(os.fspath(path))
            out[name] = array
    finally:
        _close_all(fd for fd in pending if fd >= 0)
    return out


def _read_npy(f: Any, mode: str | None) -> np.ndarray:
    """The ``.npy`` array in the open file ``f``: in memory, or a read-only map of ``f``."""
    f.seek(0)
    if mode is None:
        return np.load(f, allow_pickle=False)
    version = np.lib.format.read_magic(f)
    length = int.from_bytes(f.read(2 if version == (1, 0) else 4), "little")
    text = f.read(length).decode("latin1" if version < (3, 0) else "utf8")
    # The header was checked by the engine before (NumPy's own reader does the same parse).
    header = ast.literal_eval(text)
    dtype = np.lib.format.descr_to_dtype(header["descr"])
    shape = tuple(header["shape"])
    order = "F" if header["fortran_order"] else "C"
    if dtype.itemsize == 0 or 0 in shape:
        empty = np.empty(shape, dtype=dtype, order=order)
        empty.flags.writeable = False
        return empty
    return np.memmap(f, dtype=dtype, mode=mode, offset=f.tell(), shape=shape, order=order)
