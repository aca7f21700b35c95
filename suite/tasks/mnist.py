"""Sequential MNIST (``smnist``) and permuted sequential MNIST (``psmnist``): a 28x28 digit read one pixel per
step (784 steps, 1 feature) or, with ``row: true``, one row per step (28 steps, 28 features); 10 classes.

The images come from the standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) in the folder ``task.path`` or
the environment variable ``RNNSUITE_MNIST``; torchvision's layout (``<folder>/MNIST/raw/``) is accepted too.
The suite never downloads them. Pixels are scaled to [0, 1]. ``psmnist`` is ``smnist`` with ``permute: true``:
one fixed permutation of the 784 steps (Le, Jaitly & Hinton 2015).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from ..registry import SuiteError
from .base import Published, check_bool, register
from .classify import ClassificationTask, Examples
from .idx import read_idx

ENV = "RNNSUITE_MNIST"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
LE = "Le, Jaitly & Hinton 2015, A Simple Way to Initialize Recurrent Networks of Rectified Linear Units"
ARJOVSKY = "Arjovsky, Shah & Bengio 2016, Unitary Evolution Recurrent Neural Networks"
JANET = "van der Westhuizen & Lasenby 2018, The unreasonable effectiveness of the forget gate"
# (model, pixel MNIST, permuted pixel MNIST), test accuracy; quoted from the papers via secondary sources
PUBLISHED = (("IRNN", 0.97, 0.82, LE), ("LSTM", 0.982, 0.88, ARJOVSKY), ("uRNN", 0.951, 0.914, ARJOVSKY),
             ("JANET", 0.990, 0.925, JANET))


def _find(folder: Path, name: str) -> Path | None:
    for where in (folder, folder / "MNIST" / "raw", folder / "raw"):
        for candidate in (where / name, where / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def folder(path: str | None) -> Path:
    """task.path, else $RNNSUITE_MNIST; neither is one line saying what to put where."""
    given = path or os.environ.get(ENV)
    if not given:
        wanted = ", ".join(n for pair in FILES.values() for n in pair)
        raise SuiteError(f"MNIST needs its IDX files ({wanted}; .gz accepted): set task.path=FOLDER or {ENV}=FOLDER "
                         "(the suite never downloads them)")
    return Path(given).expanduser().absolute()


def locate(root: Path) -> dict[str, Path]:
    """The four IDX files in ``root`` (or torchvision's ``root/MNIST/raw``); anything missing is one line."""
    found = {name: _find(root, name) for pair in FILES.values() for name in pair}
    missing = [name for name, p in found.items() if p is None]
    if missing:
        raise SuiteError(f"MNIST: {', '.join(missing)} not found in {root} (nor {root / 'MNIST' / 'raw'}): put the "
                         "IDX files there (.gz accepted); the suite never downloads them")
    return found


def load_mnist(path: str | None) -> tuple[Examples, Examples]:
    """(train, test) as (N, 784) uint8 images and (N,) labels from task.path or $RNNSUITE_MNIST."""
    return _load(folder(path))


@functools.lru_cache(maxsize=2)
def _load(root: Path) -> tuple[Examples, Examples]:
    """Read once per process and folder."""
    files = locate(root)
    out = []
    for split, (images, labels) in FILES.items():
        x, y = read_idx(files[images]), read_idx(files[labels])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or int(y.max(initial=0)) > 9:
            raise SuiteError(f"MNIST {split}: {files[images].name} holds shape {x.shape} and {files[labels].name} "
                             f"{y.shape}; expected (N, 28, 28) images and N labels in 0..9")
        out.append(Examples(torch.from_numpy(x.reshape(len(x), -1).copy()), torch.from_numpy(y.astype("int64"))))
    return out[0], out[1]


@register("smnist", "sequential MNIST: a digit read pixel by pixel (784 steps; row=true: 28 rows), 10 classes",
          LE)
class SequentialMNIST(ClassificationTask):
    classes = 10
    dataset = "mnist"

    def __init__(self, *, path: str | None = None, row: bool = False, readout: str = "last", permute: bool = False,
                 protocol: str = "holdout", val_size: int = 5000, batch_size: int = 100, eval_batch_size: int = 1000):
        # 5,000 of the 60,000 training images validate (a common hold-out); batch 100 as MNIST-1D's
        self.row = check_bool(self.name, "row", row)
        self.path = path
        self.options = dict(path=path, row=row, readout=readout, permute=permute, protocol=protocol,
                            val_size=val_size, batch_size=batch_size, eval_batch_size=eval_batch_size)
        self._setup(readout, permute, protocol, val_size, batch_size, eval_batch_size)

    def load(self) -> tuple[Examples, Examples]:
        train, test = load_mnist(None if self.path is None else str(self.path))
        side = int(round(train.x.shape[1] ** 0.5))
        steps, features = (side, side) if self.row else (side * side, 1)
        return tuple(Examples(e.x.view(len(e.x), steps, features), e.y) for e in (train, test))

    def inputs(self, x):
        return super().inputs(x) / 255.0  # uint8 pixels -> [0, 1]

    @property
    def published(self) -> list[Published]:
        if self.row:
            return []  # the published numbers read one pixel per step
        column = 2 if self.permute else 1
        form = "permuted pixel MNIST" if self.permute else "pixel MNIST"
        return [Published(f"{row[0]}, {form}", "test/acc", row[column], row[3], checked=False) for row in PUBLISHED]


@register("psmnist", "permuted sequential MNIST: the pixels in one fixed random order (784 steps), 10 classes", LE)
class PermutedMNIST(SequentialMNIST):
    def __init__(self, *, path: str | None = None, row: bool = False, readout: str = "last", permute: bool = True,
                 protocol: str = "holdout", val_size: int = 5000, batch_size: int = 100, eval_batch_size: int = 1000):
        super().__init__(path=path, row=row, readout=readout, permute=permute, protocol=protocol, val_size=val_size,
                         batch_size=batch_size, eval_batch_size=eval_batch_size)
