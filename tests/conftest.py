import os

import torch

# Small recurrent ops: on the 2-core CI machines a second intra-op thread made them up to 100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the CLI subprocesses the tests start
torch.set_num_threads(1)
