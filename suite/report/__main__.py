"""``python -m suite.report N``: the report's scale benchmark alone (a report over N synthetic trial runs)."""
import sys

from ..bench.synth import scale_benchmark  # the benchmark owns the synthetic sweeps

print(scale_benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
