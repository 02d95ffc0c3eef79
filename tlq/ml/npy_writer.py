"""A ``.npy`` file written row by row, so that a job's features stream to disk instead of piling up in memory."""

from __future__ import annotations

import numpy as np


class NpyWriter:
    """float32 rows appended in order to a ``.npy`` file that ``np.load(path, mmap_mode="r")`` maps. Rows go
    straight to the file, so memory does not grow with their number; the header, written for ``capacity`` rows
    up front, is rewritten in place for the rows actually written when the writer closes (numpy leaves room in
    the header for the first axis to change)."""

    def __init__(self, path, capacity: int) -> None:
        self.path, self.capacity, self.rows, self.width = path, capacity, 0, None
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._offset = 0

    def _header(self, rows: int) -> None:
        descr = np.lib.format.dtype_to_descr(np.dtype("<f4"))
        np.lib.format.write_array_header_1_0(
            self._fh, {"descr": descr, "fortran_order": False, "shape": (rows, self.width)}
        )

    def append(self, rows: np.ndarray) -> None:
        if self.width is None:
            self.width = rows.shape[1]
            self._header(self.capacity)
            self._offset = self._fh.tell()
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows of shape {rows.shape} do not fit a file of rows {self.width} wide")
        if self.rows + len(rows) > self.capacity:
            raise ValueError(f"more than the {self.capacity} rows this writer was opened for")
        self._fh.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        """Rewrites the header for the rows written (none: an empty array, 0 by 0) and closes; again, nothing."""
        if self._fh.closed:
            return
        if self.width is None:
            self.width = 0
            self._header(0)
        else:
            self._fh.seek(0)
            self._header(self.rows)
            if self._fh.tell() != self._offset:  # cannot happen with numpy's padded headers; never write a bad file
                raise RuntimeError("the .npy header changed length when rewritten")
            self._fh.truncate(self._offset + self.rows * self.width * 4)
        self._fh.close()
