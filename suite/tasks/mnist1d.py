"""MNIST-1D (Greydanus 2020, "Scaling down deep learning"): 10 one-dimensional digit templates, padded, sheared,
scaled, translated, filtered and noised into 40-step signals; 10 classes.

Generated, never downloaded: ``mnist1d.data.make_dataset`` with ``get_dataset_args()`` defaults (5,000 samples,
80/20 split -> 4,000 train / 1,000 test, 40 steps, seed 42) builds it from the templates in about a second; the
package's ``get_dataset`` would download a pickle and is never called. The data are the same in every process
(the generator seeds numpy itself; its global random state is restored afterwards). Input (B, 40, 1).

``permute: true`` is the paper's "spatially shuffled" variant (one fixed permutation of the 40 positions; the
paper's own permutation comes from numpy's stream after the data, ours from the task's settings, see
:mod:`.classify`). Published test accuracies (the paper, its Table 1; the GRU: bidirectional, 6 units, all 40
outputs flattened into one linear layer, Adam lr 1e-2, batch 100, 8,000 steps, trained on all 4,000 examples).
"""
from __future__ import annotations

import functools
import random

import numpy as np
import torch

from ..registry import SuiteError
from .base import Published, register
from .classify import ClassificationTask, Examples

GREYDANUS = "Greydanus 2020, Scaling down Deep Learning (MNIST-1D)"
# (model, accuracy, accuracy with the spatial dimension shuffled), test set, percent
PUBLISHED = (("logistic regression", 32, 32), ("MLP", 68, 68), ("CNN", 94, 56), ("GRU (bidirectional, 6 units)", 91, 57),
             ("human", 96, 30))


@functools.lru_cache(maxsize=1)
def generate() -> tuple[Examples, Examples]:
    """(train, test) of the published MNIST-1D, generated offline; cached for the process."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise SuiteError(f"task 'mnist1d' needs the package mnist1d (pip install mnist1d): {err}") from None
    saved = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())  # seeds numpy and random with args.seed (42)
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])

    def examples(x, y):
        return Examples(torch.from_numpy(np.asarray(x, dtype=np.float32)).unsqueeze(-1),
                        torch.from_numpy(np.asarray(y, dtype=np.int64)))

    return examples(data["x"], data["y"]), examples(data["x_test"], data["y_test"])


@register("mnist1d", "MNIST-1D: classify 40-step 1-D digit signals into 10 classes (generated offline)", GREYDANUS)
class MNIST1D(ClassificationTask):
    classes = 10
    dataset = "mnist1d"

    def __init__(self, *, readout: str = "last", permute: bool = False, protocol: str = "holdout",
                 val_size: int = 500, batch_size: int = 100, eval_batch_size: int = 1000):
        # batch 100: the paper's; 500 of the 4,000 training examples validate a sweep (protocol published: none)
        self.options = dict(readout=readout, permute=permute, protocol=protocol, val_size=val_size,
                            batch_size=batch_size, eval_batch_size=eval_batch_size)
        self._setup(readout, permute, protocol, val_size, batch_size, eval_batch_size)

    def load(self) -> tuple[Examples, Examples]:
        return generate()

    @property
    def published(self) -> list[Published]:
        column = 2 if self.permute else 1
        form = ", spatially shuffled" if self.permute else ""
        return [Published(f"{row[0]}{form}", "test/acc", row[column] / 100, GREYDANUS) for row in PUBLISHED]
