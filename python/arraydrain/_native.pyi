"""Type stubs of ``arraydrain._native``, the engine behind the package (built from
``python/src`` by maturin). Everything crossing it is bytes: a column is a C-contiguous
``uint8`` array of shape ``(rows, row_bytes)`` plus its engine dtype name (``"f32"``, ``"i64"``,
``"bool"`` …, a NumPy descriptor literal such as ``"'<c8'"`` for complex, or ``None`` for
bare bytes) and the shape of one row."""

from collections.abc import Iterable, Sequence
from os import PathLike
from typing import Any, Callable

import numpy as np
import numpy.typing as npt
from typing_extensions import TypeAlias

__version__: str

Bytes2D: TypeAlias = npt.NDArray[np.uint8]
Indices: TypeAlias = npt.NDArray[np.int64]
Progress: TypeAlias = Callable[[int], Any] | None
Source: TypeAlias = tuple[str, Bytes2D, str | None, Sequence[int]]
DeviceSource: TypeAlias = tuple[str, Any, int, int, str | None, Sequence[int], int, int]
DevicePart: TypeAlias = tuple[Any, int, int, int]
ColumnSpec: TypeAlias = tuple[str, str | None, Sequence[int], int]

class Buffer:
    """Owns an engine buffer; the ``base`` of the arrays that view it."""

    @property
    def __array_interface__(self) -> dict: ...
    @property
    def storage(self) -> str: ...

class Sink:
    """The general path's output: batches copied into preallocated (or growing) buffers."""

    def __init__(
        self, columns: Sequence[ColumnSpec], rows: int | None, hint: int | None = None
    ) -> None: ...
    @staticmethod
    def to_files(
        columns: Sequence[ColumnSpec],
        rows: int,
        kind: str,
        path: str | PathLike[str],
        compress: bool,
    ) -> Sink: ...
    @property
    def rows(self) -> int: ...
    def push(self, arrays: Sequence[Bytes2D]) -> None: ...
    def finish(self) -> list[Bytes2D]: ...
    def finish_to_files(
        self,
        kind: str,
        path: str | PathLike[str],
        compress: bool,
        extra: Sequence[tuple[int, str, str, Sequence[int], Bytes2D]] = ...,
    ) -> None:
        """Writes the columns, with ``extra`` ``(position, name, descriptor, row shape, bytes)``
        columns inserted (text leaves)."""
    def close(self) -> None:
        """Drops the buffers, temporary files and folders made (what an unfinished sink does)."""

class Writer:
    """Rows pushed to their rows of one output (``arraydrain.Writer`` wraps it)."""

    def __init__(
        self,
        path: str | PathLike[str] | None,
        kind: str,
        rows: int,
        columns: Sequence[tuple[str, str, Sequence[int]]],
        ring_bytes: int,
        compress: bool = False,
        join: str | PathLike[str] | None = None,
    ) -> None: ...
    def write(self, arrays: Sequence[Bytes2D], rows: int, at: Indices | None = None) -> None: ...
    def write_device(
        self,
        ordinal: int,
        ptrs: Sequence[int],
        nbytes: Sequence[int],
        host: Sequence[Bytes2D | None],
        rows: int,
        producer_stream: int,
        at: Indices | None = None,
    ) -> None: ...
    @property
    def device_pending(self) -> int: ...
    def flush_device(self) -> None: ...
    @property
    def shared_path(self) -> str | None: ...
    def sync(self) -> None: ...
    def coverage(self) -> bytes: ...
    @property
    def rows_written(self) -> int: ...
    def missing_rows(self, limit: int) -> list[int]: ...
    def close(self, others: Sequence[bytes] = ...) -> list[Bytes2D] | None: ...
    def abort(self) -> None: ...

def launcher_placement() -> tuple[int, int, str] | None:
    """``(rank, world size, source)`` under torchrun, Slurm or MPI; None without a launcher."""

def gather(
    sources: Sequence[Source],
    rows: int,
    indices: Indices | None,
    batch_size: int,
    strategy_name: str,
    out: Sequence[Bytes2D] | None,
    progress: Progress,
) -> list[Bytes2D] | None: ...
def gather_to_files(
    sources: Sequence[Source],
    rows: int,
    indices: Indices | None,
    kind: str,
    path: str | PathLike[str],
    compress: bool,
    progress: Progress,
) -> None: ...
def check_name(name: str) -> None:
    """Raises ``DrainValueError`` unless ``name`` is a plain file name (the writers' rule)."""

def shard_order(order: Indices, rank: int, world_size: int, drop_last: bool) -> Indices:
    """Rank ``rank``'s share of ``order`` as ``DistributedSampler`` takes it (the library's
    checked padding / cut and striding)."""

def kept_rows(rows: int, batch_size: int, drop_last: bool) -> int:
    """The rows left of ``rows`` in batches of ``batch_size`` (``drop_last``: full ones only)."""

def cuda_compiled() -> bool: ...
def cuda_status(ordinal: int) -> tuple[bool, str]: ...
def cuda_gather(
    ordinal: int,
    sources: Sequence[DeviceSource],
    rows: int,
    indices: Indices | None,
    batch_size: int,
    strategy_name: str,
    out: Sequence[Bytes2D] | None,
    progress: Progress,
    owners: Sequence[Buffer | None] | None = None,
) -> list[Bytes2D] | None: ...
def cuda_drain(
    ordinal: int,
    columns: Sequence[ColumnSpec],
    rows: int | None,
    batches: Iterable[Sequence[DevicePart]],
    exact: bool = True,
) -> list[Bytes2D]: ...
def shard_world_size(dir: str | PathLike[str]) -> int:
    """The world size in a shard folder's manifest (read and validated)."""

def check_shards(
    dir: str | PathLike[str],
) -> tuple[list[str], list[list[tuple[int, PathLike[str]]]], int, int]:
    """Checks a shard folder as ``arraydrain merge`` does: column names, each rank's column
    files as (open file descriptor owned by the caller, path shown), merged rows without and
    with the sampler's padding."""

def merge_shards(
    dir: str | PathLike[str],
    out_dir: str | PathLike[str],
    keep_padding: bool = False,
) -> list[tuple[str, int, PathLike[str]]]:
    """Checks and merges a shard folder into ``out_dir/NAME.npy``: each column's name, its
    written file as an open file descriptor (owned by the caller), and its path (shown)."""
