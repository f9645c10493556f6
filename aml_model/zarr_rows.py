"""Rows of Zarr arrays in any order, read only when asked for.

Zarr's orthogonal selection wants increasing indices; :func:`read_cells` is the one place that
sorts them, reads each row once and returns the rows in the caller's order. :class:`Rows` names
rows of one or more arrays (the feature cache, the cells of several runs) without reading them,
so a training pipeline can read a batch at a time (docs/design.md, "Training and evaluation").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

__all__ = ["Rows", "read_cells", "read_cells_by_chunk"]


def read_cells(array, indices) -> np.ndarray:
    """Rows ``indices`` of ``array`` in the order given (repeats allowed), each stored row read once.

    Args:
        array: a Zarr array, a NumPy array or anything indexable by an increasing integer array.
        indices: row numbers, any order.

    Returns:
        `(len(indices), *array.shape[1:])` in the array's dtype.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    if isinstance(array, np.ndarray):
        return array[indices]
    if len(indices) == 0:
        return np.empty((0, *array.shape[1:]), np.dtype(array.dtype))
    unique, inverse = np.unique(indices, return_inverse=True)
    if hasattr(array, "get_orthogonal_selection"):
        rows = np.asarray(array.get_orthogonal_selection((unique,)))
    else:
        rows = np.asarray(array[unique])
    return rows if np.array_equal(unique, indices) else rows[inverse]


def read_cells_by_chunk(array, indices) -> np.ndarray:
    """:func:`read_cells` one stored chunk at a time: each chunk that holds any of ``indices`` is
    read (decompressed) once, and only one is in memory at a time.

    For a few rows spread over large chunks (a report's top cells: a chunk of 16 1,024 px cells is
    48 MiB), where reading them all at once would decompress every chunk together, and reading
    them one by one would decompress a chunk once per row.

    Args:
        array: a Zarr array (its ``chunks`` give the grouping) or a NumPy array.
        indices: row numbers, any order.

    Returns:
        `(len(indices), *array.shape[1:])` in the array's dtype, rows in the order given.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    if not hasattr(array, "chunks"):
        return read_cells(array, indices)
    out = np.empty((len(indices), *array.shape[1:]), np.dtype(array.dtype))
    chunks = indices // array.chunks[0]
    for chunk in np.unique(chunks):
        where = chunks == chunk
        out[where] = read_cells(array, indices[where])
    return out


class Rows:
    """A list of rows of one or more arrays: row ``i`` is ``arrays[part[i]][index[i]]``.

    Nothing is read until the object is indexed with row positions (``rows[positions]``), and
    then each array is read once with :func:`read_cells`. All arrays share the row shape and dtype.
    """

    def __init__(self, arrays: Sequence, part: np.ndarray, index: np.ndarray) -> None:
        self.arrays = list(arrays)
        self.part = np.asarray(part, np.int64).reshape(-1)
        self.index = np.asarray(index, np.int64).reshape(-1)
        if len(self.part) != len(self.index):
            message = f"{len(self.part)} array numbers for {len(self.index)} row numbers"
            raise ValueError(message)
        shapes = {tuple(a.shape[1:]) for a in self.arrays}
        if len(shapes) > 1:
            message = f"arrays of different row shapes: {sorted(shapes)}"
            raise ValueError(message)

    @classmethod
    def of(cls, array, index) -> Rows:
        """Rows ``index`` of one array."""
        index = np.asarray(index, np.int64).reshape(-1)
        return cls([array], np.zeros(len(index), np.int64), index)

    @classmethod
    def named(cls, names: Iterable[str], index, open_array: Callable[[str], object]) -> Rows:
        """Rows given as (array name, row number) pairs, e.g. (cells.zarr URL, zarr_index): each
        named array is opened once with ``open_array``."""
        numbers: dict[str, int] = {}
        part = np.array([numbers.setdefault(name, len(numbers)) for name in names], np.int64)
        return cls([open_array(name) for name in numbers], part, np.asarray(index, np.int64))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *(tuple(self.arrays[0].shape[1:]) if self.arrays else ()))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.arrays[0].dtype)

    def subset(self, positions) -> Rows:
        """These rows at ``positions``, still unread."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        return Rows(self.arrays, self.part[positions], self.index[positions])

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.asarray(positions, np.int64).reshape(-1)
        out = np.empty((len(positions), *self.shape[1:]), self.dtype)
        parts = self.part[positions]
        for number in np.unique(parts):
            where = parts == number
            out[where] = read_cells(self.arrays[number], self.index[positions[where]])
        return out
