"""Train one setting with several seeds at once, as one pack (docs/reproductions.md: the multi-seed runs).

    python docs/repro/packed_seeds.py --task repro-adding-T200 --cell gru --seeds 1 2 3 \\
        --experiment repro-adding-T200-seeds [--set KEY=VALUE ...]

Each seed is the config ``rnnsuite train --task TASK --cell CELL --seed S --set ...`` would train, and gets its
own MLflow run with the same metrics, params, tags and artifacts (plus pack.size/pack.index/pack.id); the seeds
train together through :func:`suite.packed.run_pack` (the fused batched loop), which agrees with single runs to
1e-4 in the losses (tests/test_packed.py). Prints one JSON line per seed: run id, status and final metrics.
"""
import argparse
import json
import sys

from suite.cli import _task_layer
from suite.config import build_config, parse_override
from suite.packed import Member, packable, run_pack


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--cell", required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    overrides = dict(parse_override(s) for s in args.set)
    overrides.update({"model.cell": args.cell, "tracking.experiment": args.experiment})
    cfgs = [build_config(_task_layer(args.task), overrides={**overrides, "train.seed": s}) for s in args.seeds]
    reason = packable(cfgs[0])
    if reason:
        print(f"packed_seeds: cannot pack: {reason}", file=sys.stderr)
        return 2
    results = run_pack([Member(c) for c in cfgs])
    for seed, r in zip(args.seeds, results):
        print(json.dumps({"seed": seed, "run_id": r.run_id, "status": r.status, **r.metrics}))
    return 0 if all(r.status == "FINISHED" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
