"""A run's checkpoint files: written atomically, read back with what is wrong with a damaged one, and a last one
written when the run is interrupted (``rnnsuite train --resume RUN_ID`` continues from it)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from .process import pid_alive
from .tracking import first_line


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically: a temporary file in the checkpoint's own folder, fsync, then os.replace.

    A process killed mid-write leaves the previous checkpoint intact (or none), never a truncated one. Lightning's
    own save stages the bytes in the system temp folder and moves them, which is a copy (not atomic) when that
    folder is another file system (a tmpfs /tmp), leaves the whole file behind there when killed, and syncs
    nothing to disk.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: a directory entry is data of the directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of writers that died mid-save (``.NAME.PID.tmp`` whose PID is gone)."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def load_checkpoint(path: Path) -> tuple[dict | None, str]:
    """(the checkpoint, "") if `path` loads as a Lightning checkpoint, else (None, what is wrong with it)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated: "PytorchStreamReader failed reading zip archive", EOFError, ...
        return None, first_line(exc, 120)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        return None, "not a Lightning checkpoint"
    return ckpt, ""


class InterruptCheckpoint(pl.Callback):
    """On Ctrl-C / SIGTERM, write last.ckpt so ``rnnsuite train --resume RUN_ID`` continues from there."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_exception(self, trainer, module, exception):
        if isinstance(exception, KeyboardInterrupt):
            self.folder.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(self.folder / "last.ckpt"))
