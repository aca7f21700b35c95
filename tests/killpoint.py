"""Run ``rnnsuite`` and SIGKILL it from inside at a chosen moment (a helper of the kill loop in
test_reliability.py; the moments the test cannot hit from outside by timing).

    python tests/killpoint.py KIND N -- rnnsuite arguments...

KIND  log   the N-th MLflow ``log_batch`` call (metrics or params): odd N before the call reaches the store, even
            N after it did but before the caller knows
      ckpt  the N-th checkpoint written: part of its bytes are in the file when the process dies (wherever the
            writer puts them: the final path, a temporary file beside it or in the system temp folder)
      none  nothing from inside (the test kills the process from outside)
"""
from __future__ import annotations

import builtins
import os
import signal
import sys

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm_log(n: int) -> None:
    from mlflow.tracking.client import MlflowClient

    real = MlflowClient.log_batch
    calls = [0]

    def log_batch(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n and n % 2:
            die()
        out = real(self, *args, **kwargs)
        if calls[0] == n:
            die()
        return out

    MlflowClient.log_batch = log_batch


def arm_ckpt(n: int) -> None:
    real_open = builtins.open
    payloads = [0]

    class Dying:
        """A binary file opened for writing; on the N-th torch payload, write half of the first chunk and die."""

        def __init__(self, f):
            self._f = f
            self._fresh = True

        def write(self, data):
            if self._fresh and bytes(data[:4]) == ZIP_MAGIC:
                payloads[0] += 1
                if payloads[0] == n:
                    self._f.write(data[: max(1, len(data) // 2)])
                    self._f.flush()
                    os.fsync(self._f.fileno())
                    die()
            self._fresh = False
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __iter__(self):
            return iter(self._f)

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Dying(f) if "b" in mode and ("w" in mode or "x" in mode) else f

    builtins.open = open_


def main() -> int:
    kind, n, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: killpoint.py KIND N -- ARGS"
    if kind == "log":
        arm_log(int(n))
    elif kind == "ckpt":
        arm_ckpt(int(n))
    elif kind != "none":
        raise SystemExit(f"unknown kill point {kind!r}")
    from suite.cli import main as rnnsuite

    return rnnsuite(args)


if __name__ == "__main__":
    raise SystemExit(main())
