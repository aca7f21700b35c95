"""Sequential and permuted MNIST from IDX files the tests write: the IDX format, the folder rules, the splits."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from suite import tasks
from suite.registry import SuiteError
from suite.tasks.idx import read_idx, write_idx
from suite.tasks.mnist import FILES

# ----------------------------------------------------------------------------- IDX files and (p)sMNIST
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", ["u1", "i2", "i4", "f4", "f8"])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 3 - 7).astype(dtype) if dtype != "u1" else \
        np.arange(30, dtype="u1").reshape(2, 3, 5) * 7
    path = write_idx(tmp_path / name, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=") and np.array_equal(back, array)
    if dtype == "u1" and not name.endswith(".gz"):  # the published layout, byte for byte
        assert path.read_bytes()[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 5])


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"hello world")
    with pytest.raises(SuiteError, match="is not an IDX file"):
        read_idx(tmp_path / "bad")
    good = write_idx(tmp_path / "good", np.zeros((4, 2), dtype="u1"))
    (tmp_path / "short").write_bytes(good.read_bytes()[:-1])
    with pytest.raises(SuiteError, match=r"shape \(4, 2\)"):
        read_idx(tmp_path / "short")


def fake_mnist(folder: Path, n_train=60, n_test=20, gz=False) -> tuple[np.ndarray, np.ndarray]:
    """Small MNIST-shaped IDX files: images whose pixel (i, j) is (label * 20 + i + j) % 256."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for (images, labels), n in zip(FILES.values(), (n_train, n_test)):
        y = rng.integers(0, 10, n).astype("u1")
        x = ((y[:, None, None].astype(int) * 20 + np.arange(28)[:, None] + np.arange(28)) % 256).astype("u1")
        suffix = ".gz" if gz else ""
        write_idx(folder / (images + suffix), x)
        write_idx(folder / (labels + suffix), y)
        out.append(x)
    return out[0], out[1]


def test_smnist_reads_idx_files_pixel_and_row(tmp_path):
    _, test_x = fake_mnist(tmp_path / "plain")
    task = tasks.build("smnist", path=str(tmp_path / "plain"), val_size=10, batch_size=5)
    assert (task.seq_len, task.input_size) == (784, 1)
    assert len(task.splits["train"].y) == 50 and sum(b.size for b in task.test_batches("cpu")) == 20
    first = task.test_batches("cpu")[0].x
    assert torch.allclose(first[:, :, 0], torch.from_numpy(test_x.reshape(20, -1)).float() / 255)  # row-major pixels
    rowwise = tasks.build("smnist", path=str(tmp_path / "plain"), row=True, val_size=10, batch_size=5)
    assert (rowwise.seq_len, rowwise.input_size) == (28, 28)
    assert torch.equal(rowwise.test_batches("cpu")[0].x.flatten(1), first.flatten(1))
    assert next(task.train_batches(0, "cpu")).x.shape == (5, 784, 1)


def test_psmnist_is_smnist_with_one_fixed_permutation(tmp_path):
    fake_mnist(tmp_path / "MNIST" / "raw", gz=True)  # torchvision's layout, gzip-compressed
    plain = tasks.build("smnist", path=str(tmp_path), val_size=10, batch_size=5)
    perm = tasks.build("psmnist", path=str(tmp_path), val_size=10, batch_size=5)
    assert torch.equal(perm.order, tasks.build("smnist", path=str(tmp_path), permute=True, val_size=10, batch_size=5).order)
    assert torch.equal(perm.test_batches("cpu")[0].x, plain.test_batches("cpu")[0].x[:, perm.order])
    pub = {p.description: (p.value, p.checked) for p in perm.published}
    assert pub["JANET, permuted pixel MNIST"] == (0.925, False)
    assert {p.description: p.value for p in plain.published}["IRNN, pixel MNIST"] == 0.97


def test_mnist_folder_from_the_environment(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "env")
    monkeypatch.setenv("RNNSUITE_MNIST", str(tmp_path / "env"))
    assert tasks.build("smnist", val_size=10, batch_size=5).seq_len == 784


def test_missing_mnist_is_one_line_naming_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNSUITE_MNIST", raising=False)
    with pytest.raises(SuiteError, match="set task.path=FOLDER or RNNSUITE_MNIST=FOLDER"):
        tasks.build("smnist")
    out = subprocess.run([sys.executable, "-m", "suite", "train", "--task", "psmnist", "--steps", "2",
                          "--set", f"task.path={tmp_path / 'nowhere'}"], capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "RNNSUITE_MNIST"})
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr
    assert "train-images-idx3-ubyte" in lines[0] and str(tmp_path / "nowhere") in lines[0]
    assert "never downloads" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_permuted_and_plain_forms_hold_out_the_same_examples(tmp_path):
    plain, shuffled = tasks.build("mnist1d"), tasks.build("mnist1d", permute=True, readout="mean", batch_size=7)
    assert torch.equal(plain.splits["val"].y, shuffled.splits["val"].y)
    fake_mnist(tmp_path)
    a, b = tasks.build("smnist", path=str(tmp_path), val_size=10, batch_size=5), tasks.build("psmnist", path=str(tmp_path), val_size=10, batch_size=5)
    assert torch.equal(a.splits["val"].x, b.splits["val"].x)  # stored examples; the permutation is applied on reading
    assert not torch.equal(plain.splits["val"].y, tasks.build("mnist1d", val_size=499).splits["val"].y[:500])
