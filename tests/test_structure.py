"""The layout the design asks for: model code imports no deploy or checkpoint code, training
modules carry no deploy flags, and deploy-time behaviour lives in mmef/deploy.py."""
import ast
import glob
import os.path as osp

import torch

from mmef.models import EfficientFormer, EfficientFormerV2
from tool_helpers import ROOT


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield ('.' * node.level) + (node.module or '')
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_models_import_no_deploy_or_checkpoint_code():
    files = glob.glob(osp.join(ROOT, 'mmef', 'models', '*.py'))
    assert len(files) >= 5
    for path in files:
        for name in _imports(path):
            parts = name.lstrip('.').split('.')
            assert not {'deploy', 'checkpoint', 'mmdeploy_compat'} & set(parts[:2]) or \
                name.startswith('torch'), (path, name)


def test_tools_do_not_import_each_other():
    for path in glob.glob(osp.join(ROOT, 'tools', '*.py')):
        assert not [n for n in _imports(path) if n.split('.')[0] == 'tools'], path


def test_training_modules_have_one_forward_and_no_deploy_state():
    """Deploying replaces modules (mmef.deploy); the training modules keep no flag that would
    switch their forward, and no instance carries a patched forward."""
    for model in (EfficientFormer('l1'), EfficientFormerV2('s0')):
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64))
        for m in model.modules():
            names = list(vars(m)) + list(m._modules) + list(m._parameters) + list(m._buffers)
            assert not any('deploy' in n or 'channels_last' in n for n in names), names
            assert 'forward' not in vars(m), type(m).__name__
