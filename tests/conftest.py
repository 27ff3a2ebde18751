import os
import sys

import torch

# the suite runs on 2 cores; keep intra-op threads from oversubscribing
torch.set_num_threads(min(2, os.cpu_count() or 1))
# test helpers (original-format writers and references) import each other by module name
sys.path.insert(0, os.path.dirname(__file__))
