import os
import sys

import pytest
import torch

# the suite runs on 2 cores; keep intra-op threads from oversubscribing
torch.set_num_threads(min(2, os.cpu_count() or 1))
# test helpers (original-format writers and references) import each other by module name
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _ieee_denormals_after_each_test():
    """A tool run in-process (tools/latency_table.py flushes denormals unless
    --keep-denormals) must not change the floating-point mode of the tests after it: with
    denormals flushed process-wide, the OpenVINO Mask R-CNN check after the observe test gave
    none of mmdet's detections on an AVX2 AMD host (it passed alone)."""
    yield
    from mmef.runtimes import denormal_state, flush_denormals
    if denormal_state() == 'flushed':
        flush_denormals(False)
