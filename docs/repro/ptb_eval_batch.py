"""Score a trained ptb-word checkpoint at several evaluation batch sizes (docs/reproductions.md, section 1).

    python docs/repro/ptb_eval_batch.py RNNSUITE_HOME/checkpoints/RUN_ID/last.ckpt 10 1

Builds the model of `tasks/ptb-word.yaml` (cell lstm), loads the checkpoint's weights and prints valid and test
perplexity for each batch size, the state carried across BPTT windows as in training's evaluation.
"""
import math
import sys

import torch

from suite.cli import _task_layer
from suite.config import build_config
from suite.assemble import build_model, build_task


def main(path: str, sizes: list[int]) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    weights = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    torch.set_num_threads(1)
    for size in sizes:
        cfg = build_config(_task_layer("ptb-word"), overrides={"model.cell": "lstm", "task.eval_batch_size": size})
        task = build_task(cfg)
        model = build_model(cfg, task)
        model.load_state_dict(weights)
        model.eval()
        for split, batches in (("valid", task.val_batches("cpu")), ("test", task.test_batches("cpu"))):
            total, count, state = 0.0, 0, None
            with torch.no_grad():
                for batch in batches:
                    out, state = model(batch.x, None if batch.reset else state)
                    s, n = task.score(out, batch)["loss"]
                    total, count = total + float(s), count + n
            print(f"eval_batch_size {size} {split}: {count} targets, loss {total / count:.5f}, "
                  f"ppl {math.exp(total / count):.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]] or [10, 1])
