"""rnnsuite: a benchmark suite for gated recurrent networks."""
__version__ = "0.1.0"
