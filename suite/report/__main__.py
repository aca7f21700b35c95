"""``python -m suite.report N``: the report's scale benchmark alone (a report over N synthetic trial runs)."""
import sys

from .synth import scale_benchmark

print(scale_benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
