"""The exceptions arraydrain raises.

Every error is an :class:`ArrayDrainError` and also the built-in exception a Python user expects
for its kind, so ``except ValueError`` keeps working: bad input values are ``ValueError``, bad
input types ``TypeError``, an index past the data ``IndexError`` (and ``ValueError``), host memory
``MemoryError``, CUDA ``RuntimeError``, files ``OSError``.
"""


class ArrayDrainError(Exception):
    """Base class of every error arraydrain raises."""


class DrainTypeError(ArrayDrainError, TypeError):
    """A leaf, dtype or argument of the wrong type (e.g. a ``str`` leaf, ``bfloat16``)."""


class DrainValueError(ArrayDrainError, ValueError):
    """Bad input values: lengths, shapes, row counts, options, a batch unlike the first."""


class DrainIndexError(DrainValueError, IndexError):
    """An index (from a sampler or a ``Subset``) past the data."""


class DrainMemoryError(ArrayDrainError, MemoryError):
    """The output could not be allocated."""


class DrainRuntimeError(ArrayDrainError, RuntimeError):
    """CUDA is unavailable or a CUDA call failed."""


class DrainOSError(ArrayDrainError, OSError):
    """A NumPy file could not be written."""


__all__ = [
    "ArrayDrainError",
    "DrainIndexError",
    "DrainMemoryError",
    "DrainOSError",
    "DrainRuntimeError",
    "DrainTypeError",
    "DrainValueError",
]
