"""The published MNIST-1D GRU protocol in plain PyTorch, outside rnnsuite: a yardstick for docs/reproductions.md.

nn.GRU(1, 6, bidirectional) with PyTorch's default initialisation, all 40 outputs flattened into one linear
layer, Adam lr 1e-2, batch 100 walked through the 4,000 training examples in their fixed order, 8,001 steps
(range(8000 + 1), as the repository's train.py), no clipping; prints the test accuracy after the last step.

    python docs/repro/mnist1d_reference.py --perm none  --seed 0    # plain
    python docs/repro/mnist1d_reference.py --perm paper --seed 0    # shuffled as mnist1d's shuffle_seq does it
    python docs/repro/mnist1d_reference.py --perm suite --seed 0    # shuffled with rnnsuite's fixed permutation
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def data(perm: str):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    plain = make_dataset(args)
    x, xt = plain["x"], plain["x_test"]
    if perm == "paper":  # the permutation numpy draws after the data when shuffle_seq is set
        args.shuffle_seq = True
        shuffled = make_dataset(args)
        order = [int(np.flatnonzero((x == shuffled["x"][:, [j]]).all(0))[0]) for j in range(x.shape[1])]
        assert np.array_equal(x[:, order], shuffled["x"])
        x, xt = x[:, order], xt[:, order]
    elif perm == "suite":
        from suite import tasks

        order = tasks.build("mnist1d", permute=True).order.numpy()
        x, xt = x[:, order], xt[:, order]
    as_t = lambda a: torch.tensor(a, dtype=torch.float32).unsqueeze(-1)  # noqa: E731
    return as_t(x), torch.tensor(plain["y"]), as_t(xt), torch.tensor(plain["y_test"])


class GRUFlat(torch.nn.Module):
    def __init__(self, hidden=6, steps=40):
        super().__init__()
        self.gru = torch.nn.GRU(1, hidden, batch_first=True, bidirectional=True)
        self.linear = torch.nn.Linear(2 * hidden * steps, 10)

    def forward(self, x):
        return self.linear(self.gru(x)[0].flatten(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--perm", choices=["none", "paper", "suite"], default="none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    x, y, xt, yt = data(a.perm)
    torch.manual_seed(a.seed)
    model = GRUFlat()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    start = time.time()
    for step in range(a.steps + 1):
        b = (step * 100) % len(x)
        loss = torch.nn.functional.cross_entropy(model(x[b:b + 100]), y[b:b + 100])
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        acc = float((model(xt).argmax(-1) == yt).float().mean())
    print(json.dumps({"perm": a.perm, "seed": a.seed, "test_acc": acc, "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
