import os
import sys

import pytest
import torch

# the suite runs on 2 cores; keep intra-op threads from oversubscribing
torch.set_num_threads(min(2, os.cpu_count() or 1))
# test helpers (original-format writers and references) import each other by module name
sys.path.insert(0, os.path.dirname(__file__))


def _visualizer_classes():
    from mmengine.visualization import Visualizer
    classes = [Visualizer]
    for cls in classes:  # grows while iterating: every subclass imported so far
        classes.extend(cls.__subclasses__())
    return classes


@pytest.fixture(autouse=True)
def _fresh_visualizers():
    """Each test starts with empty mmengine visualizer registries. A Runner reuses an existing
    'visualizer' (its log directory included) while the hooks draw with the newest instance of
    any class, so a seg visualizer left by one test broke a det test that ran after it."""
    for cls in _visualizer_classes():
        cls._instance_dict.clear()
