"""Rows of a cohort's volumes without reading them: what ``Cohort.subset`` returns for a cached cohort.

It sits beside ``interfaces`` at the bottom of the import graph (it imports NumPy only), so
the plugin contract can use it without importing the data layer.

A cached cohort's volumes are memory maps (``cdsf_bench.data.cache``); fancy indexing them
for a task's subjects would read every selected volume into RAM at once. Instead a
contiguous ascending range of rows becomes a slice (still a memory map) and any other
selection a ``RowView``, which reads rows from the map when it is indexed, and all of them
only when converted to an array (``np.asarray``, as the device pipeline does once). Arrays
already in memory are indexed as NumPy indexes them (a copy).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np


class RowView:
    """The rows ``rows`` of ``base`` (a memory map), read on access.

    It supports what the cohort's consumers use: ``shape``, ``dtype``, ``ndim``, ``size``,
    ``len``, indexing (an integer row gives that row of ``base``, a memory map itself) and
    conversion by ``np.asarray``, which equals ``base[rows]``.
    """

    def __init__(self, base: np.ndarray, rows: np.ndarray) -> None:
        self.base = base
        self.rows = rows
        self.shape: tuple[int, ...] = (len(rows), *base.shape[1:])
        self.dtype = base.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if first is Ellipsis or first is None or any(k is Ellipsis or k is None for k in rest):
            return np.asarray(self)[key]
        return self.base[(self.rows[first], *rest)]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = np.asarray(self.base[self.rows])
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowView({len(self.rows)} of {len(self.base)} rows, shape {self.shape}, {self.dtype})"


def take_rows(array: np.ndarray | RowView, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` along the first axis, without reading a memory map's rows.

    A memory map (or a ``RowView``) gives a slice of it when ``rows`` is a contiguous
    ascending range, else a ``RowView``; any other array is indexed by NumPy (a copy).
    The result is typed as an array: a ``RowView`` stands in for one for the operations
    listed on it.
    """
    index = np.asarray(rows)
    index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.intp, copy=False)
    if isinstance(array, RowView):
        return take_rows(array.base, array.rows[index])
    if not isinstance(array, np.memmap) or index.ndim != 1 or index.size == 0:
        return array[index]
    if index.min() < -len(array) or index.max() >= len(array):
        raise IndexError(f"rows out of range for {len(array)} subjects")
    index = np.where(index < 0, index + len(array), index)
    if np.all(np.diff(index) == 1):
        return array[int(index[0]) : int(index[-1]) + 1]
    return cast(np.ndarray, RowView(array, index))
