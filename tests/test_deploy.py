"""Deploy mode (mmef.deploy): folded model == unfused eval model, idempotence, training guard."""
import copy
import sys

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmef.deploy import (DeployedGroupNorm, DeployedMB3D, DeployedMB4D, fold_conv_norm,
                         is_deployed, switch_to_deploy, switch_to_deploy_model)
from mmef.models import EfficientFormer, EfficientFormerV2
from mmef.models.layers import MB3D, MB4D, ConvNorm, DropPath, LayerScale
from weights import randomize, shrink_bn_variances


def build(arch, **kwargs):
    model = EfficientFormer(arch, **kwargs)
    model.init_weights()
    return randomize(model).eval()


def reference(model, x):
    # With autograd on, the unfused model takes the plain path (scaled_dot_product_attention,
    # out-of-place ops), so the deployed fast paths are checked against independent kernels.
    with torch.enable_grad():
        return [o.detach() for o in model(x)]


def assert_rel_close(outs, refs, tol=1e-4):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        assert err <= tol, f'relative error {err:.2e} > {tol}'


@pytest.mark.parametrize('arch,mode', [('l1', 'relative'), ('l1', 'official'),
                                       ('l3', 'relative'), ('l7', 'relative')])
def test_deployed_equals_unfused(arch, mode):
    torch.manual_seed(0)
    model = build(arch, attn_bias_mode=mode, attn_bias_resolution=5 if mode == 'official' else 7)
    deployed = switch_to_deploy(copy.deepcopy(model))
    for size in [(96, 128), (130, 70)]:  # the second: odd grids (ceil), non-square
        batch = 2 if arch == 'l1' and size[0] == 96 else 1  # per-sample loop of the attention
        x = torch.randn(batch, 3, *size)
        refs = reference(model, x)
        with torch.no_grad():
            assert_rel_close(deployed(x), refs)
        if size[0] == 96:  # the autograd path of the deployed model (lerp, SDPA) too
            with torch.enable_grad():
                assert_rel_close([o.detach() for o in deployed(x)], refs)


@pytest.mark.parametrize('family', ['v1', 'v2'])
def test_attention_row_blocks_equal_whole_maps(family):
    """CPU inference runs attention a block of query rows at a time. At test sizes the default
    block covers the whole map, so a small one forces many blocks (the last one short), for two
    samples, at a map size and its transpose. Each attention is compared with its own plain
    path (taken with autograd on) on the inputs it gets inside the network, with bias tables
    large enough to matter next to q.k; the whole model with the unfused one."""
    torch.manual_seed(0)
    model = (EfficientFormer('l1') if family == 'v1' else EfficientFormerV2('s0'))
    model.init_weights()
    model = randomize(model).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('bias_table'):
                p.mul_(10)
    deployed = switch_to_deploy(copy.deepcopy(model))
    blocked = [m for m in deployed.modules() if hasattr(m, 'chunk_floats')]
    assert len(blocked) == (1 if family == 'v1' else 5)
    for m in blocked:
        m.chunk_floats = 700  # e.g. 8 heads x 15 keys: 5 rows a block
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.append((m, args)))
             for m in blocked]
    for size in [(96, 160), (160, 96), (130, 70)]:
        x = torch.randn(2, 3, *size)
        refs = reference(model, x)
        with torch.no_grad():
            assert_rel_close(deployed(x), refs)
    for h in hooks:
        h.remove()
    assert len(inputs) == 3 * len(blocked)
    for m, args in inputs:
        with torch.no_grad():
            out = m(*args)
        with torch.enable_grad():
            ref = m(*args).detach()
        assert_rel_close([out], [ref], 1e-5)


def test_deploy_folds_and_drops_training_parts():
    model = build('l1', drop_path_rate=0.1, with_cp=True)
    deployed = switch_to_deploy(copy.deepcopy(model))
    kinds = (_BatchNorm, DropPath, LayerScale, ConvNorm, MB4D, MB3D)
    assert any(isinstance(m, kinds) for m in model.modules())
    assert not any(isinstance(m, kinds) for m in deployed.modules())
    assert not is_deployed(model) and is_deployed(deployed)
    for stage in deployed.stages:
        assert not stage.with_cp
        # MB4D: BN and ls2 folded into the convs, ls1 (times pool(x) - x) kept on purpose
        assert all(isinstance(block, DeployedMB4D) for block in stage.blocks)
        for block in stage.attn_blocks:
            assert isinstance(block, DeployedMB3D)
            assert not block.norm1.elementwise_affine and not block.norm2.elementwise_affine
    assert all(isinstance(getattr(deployed, f'norm{i}'), DeployedGroupNorm) for i in range(4))
    keys = deployed.state_dict().keys()
    assert not any('.bn.' in k or 'running_mean' in k for k in keys)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert_rel_close(deployed(x), reference(model, x))


def test_deploy_twice_is_harmless_and_training_is_refused():
    model = build('l1')
    deployed = switch_to_deploy(copy.deepcopy(model))
    before = {k: v.clone() for k, v in deployed.state_dict().items()}
    assert switch_to_deploy(deployed) is deployed
    after = deployed.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_rel_close(deployed(x), reference(model, x))
    with pytest.raises(RuntimeError, match='deploy mode'):
        deployed.train()
    deployed.eval()  # eval stays allowed
    assert not deployed.training


def test_precompute_bias_for_input_size():
    model = build('l1')
    switch_to_deploy(model, input_size=(800, 1333))
    attn = model.stages[3].attn_blocks[0].attn
    table = attn.attn.bias_table
    # 800x1333 -> four ceil-halvings -> 25 x 42 tokens: strides 4..32 as in the forward
    bias = attn.attn_bias((25, 42))
    assert bias.shape == (8, 25 * 42, 25 * 42)
    with torch.no_grad():
        table.add_(1.)  # precomputed: the 25x42 bias is not computed again...
    assert attn.attn_bias((25, 42)) is bias
    # ...while a grid seen for the first time is computed from the table as it is now
    other = attn.attn_bias((24, 42))
    assert other.shape == (8, 24 * 42, 24 * 42)
    assert not torch.allclose(other[:, 0, 0], bias[:, 0, 0])


@pytest.mark.parametrize('size', [(96, 160), (160, 96)])
def test_folds_keep_bn_eps(size):
    """BatchNorms with small running variances (1e-3..1e-2, weights scaled by sqrt(var) so that
    activations stay bounded): there eps = 1e-5 shifts the result by up to 0.5 %, so a fold that
    leaves eps out fails the 1e-5 tolerance below (float rounding is about 1e-6)."""
    model = shrink_bn_variances(build('l1'), seed=1)
    deployed = switch_to_deploy(copy.deepcopy(model))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert_rel_close(deployed(x), reference(model, x), tol=1e-5)


def test_fuse_conv_bn_needs_running_stats():
    unit = ConvNorm(3, 4, 3)
    unit.bn = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(ValueError, match='running statistics'):
        fold_conv_norm(unit)


def test_deploy_model_finds_backbone_and_rejects_others():
    with pytest.raises(ValueError, match='no EfficientFormer'):
        switch_to_deploy_model(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(TypeError, match='switch_to_deploy_model'):
        switch_to_deploy(nn.Sequential(nn.Conv2d(3, 3, 1)))
    model = build('l1')
    wrapper = nn.ModuleDict(dict(backbone=copy.deepcopy(model)))
    switch_to_deploy_model(wrapper)
    assert is_deployed(wrapper['backbone'])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_rel_close(wrapper['backbone'](x), reference(model, x))
    with pytest.raises(RuntimeError, match='deploy mode'):
        wrapper.train()


@pytest.mark.parametrize('config', ['mask-rcnn_efficientformer-l1_fpn_1x_coco.py',
                                    'mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py'])
def test_deployed_mask_rcnn_equals_unfused(config):
    """Whole mmdet detector from our configs (V1, V2): features and RoI-head outputs on the same
    proposals. mmcv's CPU RoIAlign reads the maps' raw memory as NCHW, so this also checks the
    output layout (channels_last maps give it silently wrong RoI features)."""
    pytest.importorskip('mmdet', reason='mmdet (with mmcv ops) is not installed')
    from pathlib import Path

    import mmdet.models  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / 'configs' / 'mask_rcnn' /
                              config))
    cfg.model.backbone.pop('init_cfg')
    model = MODELS.build(cfg.model)
    model.init_weights()
    randomize(model.backbone)
    model.eval()
    deployed = switch_to_deploy_model(copy.deepcopy(model), fuse_others=True)
    assert is_deployed(deployed.backbone)
    x = torch.randn(1, 3, 160, 224)
    samples = [DetDataSample(metainfo=dict(img_shape=(160, 224), ori_shape=(160, 224),
                                           scale_factor=(1., 1.), pad_shape=(160, 224),
                                           batch_input_shape=(160, 224)))]
    with torch.no_grad():
        feats = model.extract_feat(x)
        proposals = model.rpn_head.predict(feats, samples, rescale=False)
        expected = model.roi_head.forward(feats, proposals, samples)
        feats_d = deployed.extract_feat(x)
        got = deployed.roi_head.forward(feats_d, proposals, samples)
    assert_rel_close(feats_d, feats)
    assert_rel_close(got, expected)
    assert all(f.is_contiguous() for f in deployed.backbone(x))
    with pytest.raises(RuntimeError, match='deploy mode'):
        deployed.train()


def _benchmark_tool():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        'benchmark', Path(__file__).resolve().parents[1] / 'tools' / 'benchmark.py')
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_benchmark_tool_runs(capsys):
    """tools/benchmark.py end to end on a tiny input (timings themselves are not asserted)."""
    benchmark = _benchmark_tool()
    benchmark.main(['backbone', '--size', '64', '96', '--runs', '2', '--warmup', '1',
                    '--threads', '1', '--models', 'l1', 'l1-fold', 'l1-deploy', 'l1-deploy:bf16',
                    'l1-deploy:autocast-bf16', 'l1-deploy:ort', 'v2s0-deploy', '--ref', 'l1'])
    out = capsys.readouterr().out
    assert '| l1-deploy |' in out and 'l1-deploy / l1 = ' in out
    assert '| l1-deploy:bf16 |' in out and 'l1-deploy:ort / l1-deploy = ' in out
    with pytest.raises(SystemExit):
        benchmark.parse_args(['train', '--models', 'l1-deploy'])


def test_benchmark_refuses_to_time_a_wrong_runtime(monkeypatch):
    """An onnxruntime / OpenVINO row is timed only when its output equals PyTorch's
    (mmef.runtimes.check_outputs); OpenVINO (optional) missing is named with the install
    command."""
    from mmef.runtimes import RUNTIME_TOL, check_outputs
    benchmark = _benchmark_tool()
    ref = torch.randn(1, 8, 4, 6)
    tol = RUNTIME_TOL['f32']
    errors = check_outputs('onnxruntime', [ref.numpy() * (1 + 1e-6)], [ref], tol)
    assert 0 < errors[0] < 2e-6
    wrong = ref.clone()
    wrong[0, 0, 0, 0] += 1e-2 * ref.abs().max()
    with pytest.raises(RuntimeError, match=r'onnxruntime differs from PyTorch beyond 0.005 '
                       r'relative \(output 0: 1.00e-02\)'):
        check_outputs('onnxruntime', [wrong.numpy()], [ref], tol)
    monkeypatch.setitem(sys.modules, 'openvino', None)
    with pytest.raises(SystemExit, match='pip install openvino'):
        benchmark.main(['backbone', '--size', '64', '64', '--runs', '1', '--warmup', '0',
                        '--models', 'l1-deploy:ov'])

