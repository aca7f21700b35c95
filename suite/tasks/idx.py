"""The IDX file format of the MNIST distribution (LeCun et al.): read and write, plain or gzip-compressed.

Layout: two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, each dimension as a big-endian uint32, then the data, big-endian, in
C order. ``train-images-idx3-ubyte`` is (60000, 28, 28) uint8, ``train-labels-idx1-ubyte`` (60000,) uint8.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..registry import SuiteError

TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
         0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open(path: Path, mode: str):
    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` read through gzip); a malformed file is one SuiteError."""
    path = Path(path)
    try:
        with _open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise SuiteError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in TYPES:
        raise SuiteError(f"{path} is not an IDX file (it should start with 00 00, a type byte, a rank byte)")
    dtype, rank = TYPES[raw[2]], raw[3]
    head = 4 + 4 * rank
    if len(raw) < head:
        raise SuiteError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{rank}I", raw[4:head])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - head != count * dtype.itemsize:
        raise SuiteError(f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} bytes of data), "
                         f"the file holds {len(raw) - head}")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in .gz); for tests and conversions."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise SuiteError(f"IDX cannot store dtype {array.dtype}; use one of {', '.join(map(str, codes))}")
    data = array.astype(TYPES[code], copy=False).tobytes()
    with _open(path, "wb") as f:
        f.write(bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + data)
    return path
