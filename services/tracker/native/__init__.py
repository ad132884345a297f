"""The tracker's C kernels (kernels.c), built once into a shared library and called through ctypes.

`python -m services.tracker.native` builds the library (scripts/setup.sh and the tracker image do this); a process
that finds no library builds it on first use when a C compiler is present. The file name carries a hash of the
source, so an edited kernel is rebuilt, never mixed up with an old build. Without a compiler or library everything
still works: `available()` is False and callers take their numpy/torch paths (slower, the same results).

HALOWEAVE_NATIVE_CACHE overrides where the library lives (default `.cache/native` in the repository).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from services.common.config import EnvSettings

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
REPO_ROOT = Path(__file__).resolve().parents[3]
# No fast-math and no FMA contraction: the score update must round exactly as numpy's separate operations do.
CFLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-std=c11")
DECAY_MODES = {"additive": 0, "exponential": 1, "none": 2}

_lib: ctypes.CDLL | None = None
_loaded = False


class NativeSettings(EnvSettings):
    cache: Path = Field(
        default_factory=lambda: REPO_ROOT / ".cache" / "native",
        validation_alias="HALOWEAVE_NATIVE_CACHE",
        description="Where the tracker's C kernels are compiled to (the file name carries the source's hash).",
        json_schema_extra={"shown_default": "`.cache/native` in the repository"},
    )


def cache_dir() -> Path:
    return NativeSettings().cache


def library_path() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    return cache_dir() / f"tracker_kernels_{digest}.so"


def build() -> Path:
    """Compiles kernels.c (atomically: a concurrent builder never sees half a file). Raises if no compiler works."""
    target = library_path()
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (cc or gcc; set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        subprocess.run([compiler, *CFLAGS, "-o", str(partial), str(SOURCE)], check=True, capture_output=True)
        os.replace(partial, target)
    return target


BUILD_ERRORS = (OSError, RuntimeError, subprocess.CalledProcessError)


def _describe(exc: BaseException) -> str:
    """A failed build says why in the compiler's own words."""
    if isinstance(exc, subprocess.CalledProcessError):
        return str(exc.stderr.decode(errors="replace"))
    return str(exc)


def _load() -> ctypes.CDLL | None:
    global _lib, _loaded
    if _loaded:
        return _lib
    _loaded = True
    try:
        path = library_path()
        if not path.exists():
            path = build()
        lib = ctypes.CDLL(str(path))
    except BUILD_ERRORS as exc:
        log.warning("tracker C kernels unavailable (%s); using the numpy/torch paths", _describe(exc))
        return None
    size, pointer = ctypes.c_size_t, ctypes.c_void_p
    lib.hw_colsum_f16.restype = ctypes.c_uint16
    lib.hw_colsum_f16.argtypes = [pointer, size, size, pointer]
    lib.hw_colsum_f16_portable.restype = ctypes.c_uint16
    lib.hw_colsum_f16_portable.argtypes = [pointer, size, size, pointer]
    lib.hw_colsum_vectorised.restype = ctypes.c_int
    lib.hw_colsum_vectorised.argtypes = []
    lib.hw_score_step.restype = ctypes.c_int64
    lib.hw_score_step.argtypes = [
        pointer, pointer, pointer, size, pointer, pointer, size,
        ctypes.c_int, ctypes.c_double, ctypes.c_int, ctypes.c_double, ctypes.c_double, pointer, pointer,
    ]  # fmt: skip
    lib.hw_sentence_runs.restype = ctypes.c_int64
    lib.hw_sentence_runs.argtypes = [
        pointer, size, pointer, pointer, pointer, pointer, ctypes.c_int32, ctypes.c_int32,
        pointer, pointer, pointer, pointer,
    ]  # fmt: skip
    _lib = lib
    return lib


def _required() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError("tracker C kernels are not available")
    return lib


def _check(kernel: str, arrays: tuple[tuple[NDArray[Any], type], ...]) -> None:
    """The kernels read raw memory: every array must be C-contiguous and of exactly the dtype the C code expects."""
    for array, dtype in arrays:
        if array.dtype != dtype or not array.flags.c_contiguous:
            raise ValueError(f"{kernel} needs contiguous {np.dtype(dtype).name} arrays")


def _address(array: NDArray[Any]) -> int:
    """The address of an array's data. `ndarray.ctypes.data` builds a helper object on every access (about 1 µs; a
    step passes a dozen pointers); a ctypes view of a writable buffer is a third of that."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):  # read-only (a frame's received bytes), empty, or not contiguous
        return int(array.ctypes.data)


def available() -> bool:
    return _load() is not None


def vectorised() -> bool:
    """Whether the fp16 sums use the CPU's conversion instructions (AVX2 + F16C) rather than the portable loop."""
    lib = _load()
    return lib is not None and bool(lib.hw_colsum_vectorised())


def column_sums_f16(rows: NDArray[np.uint16], portable: bool = False) -> tuple[NDArray[np.float32], int]:
    """Column sums in float32 of a C-contiguous [rows, cols] array of fp16 bit patterns, and the largest pattern.

    The largest pattern validates in the same pass: values are finite and non-negative iff it is below 0x7C00.
    `portable` forces the plain C loop (tests compare it with the vector one).
    """
    lib = _required()
    if rows.ndim != 2:
        raise ValueError("column_sums_f16 needs a 2-D array")
    _check("column_sums_f16", ((rows, np.uint16),))
    out = np.empty(rows.shape[1], dtype=np.float32)
    kernel = lib.hw_colsum_f16_portable if portable else lib.hw_colsum_f16
    largest = kernel(_address(rows), rows.shape[0], rows.shape[1], _address(out))
    return out, int(largest)


def score_step(
    scores: NDArray[np.float64],
    positions: NDArray[np.int64],
    active: NDArray[np.intp] | None,
    attention: NDArray[np.float32],
    table: NDArray[np.float64],
    boost: float,
    decay_mode: str,
    decay_rate: float,
    epsilon: float,
    live: NDArray[np.float64],
) -> NDArray[np.int64]:
    """Updates scores[active] in place (all of them when `active` is None), writes the new scores in that order to
    `live`, and returns the indices of the entries whose score moved by more than `epsilon`, ascending; see
    hw_score_step in kernels.c."""
    lib = _required()
    count = len(positions) if active is None else len(active)
    if len(attention) != count or len(live) != count:
        raise ValueError("attention and live must hold one value per active entry")
    checked = (
        (scores, np.float64), (positions, np.int64), (table, np.float64), (attention, np.float32), (live, np.float64)
    )  # fmt: skip
    _check("score_step", checked if active is None else (*checked, (active, np.int64)))
    changed = np.empty(count, dtype=np.int64)
    status = lib.hw_score_step(
        _address(scores),
        _address(positions),
        None if active is None else _address(active),
        count,
        _address(attention),
        _address(table),
        len(table),
        int(boost != 1.0),
        boost,
        DECAY_MODES.get(decay_mode, -1),
        decay_rate,
        epsilon,
        _address(changed),
        _address(live),
    )
    if status == -1:
        raise ValueError(f"unknown decay mode {decay_mode!r}")
    if status == -2:
        raise ValueError("a distance is beyond the weights table")
    return changed[:status]


def sentence_runs(
    active: NDArray[np.int64],
    keys: NDArray[np.int64],
    scores: NDArray[np.float64],
    role: NDArray[np.uint8],
    turn: NDArray[np.int32],
    last_user_turn: int,
    gen_turn: int,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """The prunable sentences among the active entries: (keys, maxima, first index into `active`, sizes), oldest
    first; see hw_sentence_runs in kernels.c."""
    lib = _required()
    checked = ((active, np.int64), (keys, np.int64), (scores, np.float64), (role, np.uint8), (turn, np.int32))
    _check("sentence_runs", checked)
    count = len(active)
    run_key = np.empty(count, dtype=np.int64)
    run_max = np.empty(count, dtype=np.float64)
    run_first = np.empty(count, dtype=np.int64)
    run_size = np.empty(count, dtype=np.int64)
    runs = lib.hw_sentence_runs(
        _address(active), count, _address(keys), _address(scores), _address(role), _address(turn),
        last_user_turn, gen_turn, _address(run_key), _address(run_max), _address(run_first), _address(run_size),
    )  # fmt: skip
    return run_key[:runs], run_max[:runs], run_first[:runs], run_size[:runs]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build()
    except BUILD_ERRORS as exc:
        print(f"tracker C kernels not built: {_describe(exc)}", file=sys.stderr)
        return 1
    print(f"tracker C kernels: {path} (fp16 sums vectorised: {vectorised()})")
    return 0
