"""Type stubs of ``arraydrain._native``, the engine behind the package (built from
``python/src`` by maturin). Everything crossing it is bytes: a column is a C-contiguous
``uint8`` array of shape ``(rows, row_bytes)`` plus its engine dtype name (``"f32"``, ``"i64"``,
``"bool"`` …, or ``None`` for opaque bytes such as complex) and the shape of one row."""

from os import PathLike
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

Bytes2D = npt.NDArray[np.uint8]
Indices = npt.NDArray[np.int64]
Progress = Optional[Callable[[int], Any]]
Source = Tuple[str, Bytes2D, Optional[str], Sequence[int]]
DeviceSource = Tuple[str, "DeviceBuffer", Optional[str], Sequence[int], int, int]
ColumnSpec = Tuple[str, Optional[str], Sequence[int], int]

class Buffer:
    """Owns an engine buffer; the ``base`` of the arrays that view it."""

    @property
    def __array_interface__(self) -> dict: ...
    @property
    def storage(self) -> str: ...

class Sink:
    """The general path's output: batches copied into preallocated (or growing) buffers."""

    def __init__(self, columns: Sequence[ColumnSpec], rows: Optional[int]) -> None: ...
    @staticmethod
    def to_files(
        columns: Sequence[ColumnSpec],
        rows: int,
        kind: str,
        path: Union[str, PathLike[str]],
        compress: bool,
    ) -> "Sink": ...
    @property
    def rows(self) -> int: ...
    def push(self, arrays: Sequence[Bytes2D]) -> None: ...
    def finish(self) -> List[Bytes2D]: ...
    def finish_to_files(self, kind: str, path: Union[str, PathLike[str]], compress: bool) -> None: ...

class DeviceBuffer:
    """Engine-owned device memory, writable through ``__cuda_array_interface__``."""

    def __init__(self, len: int, ordinal: int) -> None: ...
    @property
    def __cuda_array_interface__(self) -> dict: ...
    @property
    def device(self) -> int: ...

def gather(
    sources: Sequence[Source],
    rows: int,
    indices: Optional[Indices],
    batch_size: int,
    strategy_name: str,
    out: Optional[Sequence[Bytes2D]],
    progress: Progress,
) -> Optional[List[Bytes2D]]: ...
def gather_to_files(
    sources: Sequence[Source],
    rows: int,
    indices: Optional[Indices],
    batch_size: int,
    kind: str,
    path: Union[str, PathLike[str]],
    compress: bool,
    progress: Progress,
) -> None: ...
def cuda_compiled() -> bool: ...
def cuda_status(ordinal: int) -> Tuple[bool, str]: ...
def cuda_gather(
    ordinal: int,
    sources: Sequence[DeviceSource],
    rows: int,
    indices: Optional[Indices],
    batch_size: int,
    strategy_name: str,
    out: Optional[Sequence[Bytes2D]],
    progress: Progress,
    owners: Optional[Sequence[Optional[Buffer]]] = None,
) -> Optional[List[Bytes2D]]: ...
def cuda_drain(
    ordinal: int,
    columns: Sequence[ColumnSpec],
    rows: Optional[int],
    batches: Iterable[Sequence[Tuple[DeviceBuffer, int]]],
) -> List[Bytes2D]: ...
