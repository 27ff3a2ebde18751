"""EfficientFormerV2: any input size, original ImageNet / COCO / ADE20K files against an independent
re-computation of the original arithmetic (tests/_original_ref_v2.py), the default relative bias
against its restatement, timm files, conversion and deploy mode."""
import copy
import math
import re

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmef.checkpoint import CheckpointError, load_file
from mmef.checkpoint.convert import convert_checkpoint, format_summary
from mmef.checkpoint.keys import detect_format, to_mmef
from mmef.deploy import switch_to_deploy
from mmef.models import EfficientFormerV2
from _original_ref import save_imagenet_checkpoint, save_mmcv1_checkpoint
from _original_ref_v2 import ARCHS, classify, make_original_v2, original_v2_forward
from weights import randomize, shrink_bn_variances

ALL = ['s0', 's1', 's2', 'l']
# reported with the classifier at 224 (paper / original README): params (M)
PAPER_PARAMS_M = {'s0': 3.5, 's1': 6.1, 's2': 12.6, 'l': 26.1}


def rel(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def from_file(arch, path, **kwargs):
    model = EfficientFormerV2(arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)),
                              **kwargs)
    model.init_weights()
    return model.eval()


@pytest.fixture(scope='module')
def imagenet_files(tmp_path_factory):
    root = tmp_path_factory.mktemp('v2in1k')
    files = {}
    for i, arch in enumerate(ALL):
        sd = make_original_v2(arch, seed=10 + i)
        save_imagenet_checkpoint(root / f'eformer_{arch}_450.pth', sd)
        files[arch] = (root / f'eformer_{arch}_450.pth', sd)
    return files


# ------------------------------------------------------------------------------ structure
@pytest.mark.parametrize('arch', ALL)
def test_param_counts(arch):
    model = EfficientFormerV2(arch)
    c = ARCHS[arch][0][-1]
    classifier = 4 * c + 2 * (c * 1000 + 1000)  # BatchNorm (weight, bias) + 2 heads; + stats
    total = (sum(p.numel() for p in model.parameters()) + classifier - 2 * c) / 1e6
    # timm counts the same models as 3.6 / 6.2 / 12.7 / 26.3 M; the paper rounds down
    assert abs(total / PAPER_PARAMS_M[arch] - 1) < 0.03, total


@pytest.mark.parametrize('size', [(333, 517), (65, 97), (32, 32), (1, 1), (97, 65)])
def test_any_size_shapes_finite_and_batch_independent(size):
    model = randomize(EfficientFormerV2('s0')).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        both = model(x)
        first = model(x[:1])
    for i, (out, single) in enumerate(zip(both, first)):
        stride = 2**(i + 2)
        assert out.shape == (2, ARCHS['s0'][0][i], math.ceil(size[0] / stride),
                             math.ceil(size[1] / stride))
        assert torch.isfinite(out).all()
        assert rel(out[:1], single) <= 1e-5  # (random weights: maps reach O(1e3))


def test_detection_size_all_variants_shapes():
    x = torch.randn(1, 3, 800, 1333)
    for arch in ('s0', 'l'):
        with torch.no_grad():
            outs = EfficientFormerV2(arch).eval()(x)
        assert [tuple(o.shape[-2:]) for o in outs] == [(200, 334), (100, 167), (50, 84), (25, 42)]


def test_gradients_reach_every_parameter():
    # no drop path: whether a dropped block gets a gradient would depend on the random state
    model = randomize(EfficientFormerV2('s0')).train()
    outs = model(torch.randn(2, 3, 96, 64))
    sum(o.square().mean() for o in outs).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead, dead


def test_norm_eval_and_frozen_stages():
    model = EfficientFormerV2('s0', norm_eval=True, frozen_stages=2).train()
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    frozen = [p for n, p in model.named_parameters() if n.startswith(('stem.', 'stages.0.',
                                                                      'stages.1.'))]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith('stages.2.'))


@pytest.mark.parametrize('kwargs, fragment', [
    (dict(arch='s3'), "valid choices: ['l', 's0', 's1', 's2']"),
    (dict(arch=dict(widths=(32, 48, 96, 176), depths=(2, 2, 6, 4), num_attn_blocks=2)),
     "missing keys: ['mlp_ratios']"),
    (dict(arch=dict(widths=(32, 48, 96, 176), depths=(2, 2, 6, 4), num_attn_blocks=5,
                    mlp_ratios=((4, 4), (4, 4), (4, ) * 6, (4, ) * 4))),
     'num_attn_blocks"] must be an int in [0, min(depths[2], depths[3])=4]'),
    (dict(arch=dict(widths=(32, 48, 96, 176), depths=(2, 2, 6, 4), num_attn_blocks=2,
                    mlp_ratios=((4, 4), (4, 4), (4, ) * 5, (4, ) * 4))),
     'mlp_ratios"] must be 4 sequences'),
    (dict(attn_bias_mode='abs'), 'attn_bias_mode must be one of'),
    (dict(out_indices=(4, )), 'out_indices entries must be ints in [-4, 3]'),
])
def test_constructor_errors(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        EfficientFormerV2(**kwargs)
    assert fragment in str(err.value)


def test_registered_for_mmdet_and_mmseg():
    import mmef  # noqa: F401
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    assert DET.get('EfficientFormerV2') is SEG.get('EfficientFormerV2') is EfficientFormerV2
    assert DET.get('mmef.EfficientFormerV2') is EfficientFormerV2


# ------------------------------------------------------------------ original arithmetic
@pytest.mark.parametrize('arch', ALL)
def test_imagenet_file_reproduces_original_at_224(arch, imagenet_files):
    path, sd = imagenet_files[arch]
    model = from_file(arch, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        outs = model(x)
    ref = original_v2_forward(sd, x, 'imagenet')
    for out, r in zip(outs, ref):
        assert rel(out, r) <= 1e-4
    # and the classifier kept under its original names classifies like the original model
    state = to_mmef(sd)
    norm = torch.nn.BatchNorm2d(ARCHS[arch][0][-1]).eval()
    norm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith('norm.')})
    feat = norm(outs[-1]).flatten(2).mean(-1)
    logits = (torch.nn.functional.linear(feat, state['head.weight'], state['head.bias']) +
              torch.nn.functional.linear(feat, state['dist_head.weight'],
                                         state['dist_head.bias'])) / 2
    assert rel(logits, classify(sd, x)) <= 1e-4


@pytest.mark.parametrize('arch,resolution', [('s0', 25), ('s1', 16), ('s2', 25), ('l', 16)])
def test_dense_file_reproduces_original_official(arch, resolution, tmp_path):
    """Original Mask R-CNN / Semantic FPN files (mmcv 1.x runner checkpoints) in official mode,
    at two sizes that the original code runs (multiples of 32), one the transpose of the other."""
    sd = make_original_v2(arch, resolution, seed=20)
    path = tmp_path / 'dense.pth'
    save_mmcv1_checkpoint(path, {'backbone.' + k: v for k, v in sd.items()})
    model = from_file(arch, path, attn_bias_mode='official', attn_bias_resolution=resolution)
    for size in [(256, 320), (320, 256)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            outs = model(x)
        for out, r in zip(outs, original_v2_forward(sd, x, 'dense')):
            assert rel(out, r) <= 1e-4, size


def test_dense_file_in_relative_mode_is_refused(tmp_path):
    sd = make_original_v2('s0', 16, seed=3)
    path = tmp_path / 'ade.pth'
    save_mmcv1_checkpoint(path, {'backbone.' + k: v for k, v in sd.items()})
    with pytest.raises(CheckpointError, match="attn_bias_mode='official'"):
        from_file('s0', path, attn_bias_resolution=16)


@pytest.mark.parametrize('arch', ['s0', 's2'])
@pytest.mark.parametrize('size', [(256, 352), (352, 256), (250, 330)])
def test_relative_mode_matches_independent_restatement(arch, size, imagenet_files):
    """Default bias from an ImageNet file at non-square grids in both orientations (and odd
    maps): each table resized bicubically to the grid its attention sees (stride-2 grid in
    stage 3, stage-4 grid, the downsampling attention's full-resolution key grid read at
    (|2qy - ky|, |2qx - kx|)), restated in tests/_original_ref_v2.py."""
    path, sd = imagenet_files[arch]
    model = from_file(arch, path)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = model(x)
    ref = original_v2_forward(sd, x, 'relative')
    for out, r in zip(outs, ref):
        assert out.shape == r.shape
        assert rel(out, r) <= 1e-4
    # the tables matter: zero tables give clearly different outputs
    zero = {k: torch.zeros_like(v) if k.endswith('attention_biases') else v
            for k, v in sd.items()}
    assert rel(original_v2_forward(zero, x, 'relative')[-1], ref[-1]) > 1e-3


def test_imagenet_tables_resized_for_other_resolution(imagenet_files):
    path, sd = imagenet_files['s0']
    model = from_file('s0', path, attn_bias_resolution=16)
    table = sd['network.5.attn.attention_biases']  # 14x14 over the key grid
    got = model.stages[3].downsample.attn.bias_table
    expected = torch.nn.functional.interpolate(table.reshape(1, 8, 14, 14), size=(32, 32),
                                               mode='bicubic', align_corners=False)
    torch.testing.assert_close(got, expected.reshape(8, -1))
    table = sd['network.6.3.token_mixer.attention_biases']
    expected = torch.nn.functional.interpolate(table.reshape(1, 8, 7, 7), size=(16, 16),
                                               mode='bicubic', align_corners=False)
    torch.testing.assert_close(model.stages[3].blocks[3].attn.bias_table, expected.reshape(8, -1))


# ---------------------------------------------------------------------- other formats
def _to_timm(sd):
    """The timm layout of an original V2 state dict, written from timm's naming."""
    out = {}
    for key, value in sd.items():
        if 'attention_bias_idxs' in key:
            continue  # non-persistent buffers in timm
        new = key
        new = re.sub(r'^patch_embed\.0\.', 'stem.conv1.conv.', new)
        new = re.sub(r'^patch_embed\.1\.', 'stem.conv1.bn.', new)
        new = re.sub(r'^patch_embed\.3\.', 'stem.conv2.conv.', new)
        new = re.sub(r'^patch_embed\.4\.', 'stem.conv2.bn.', new)
        new = re.sub(r'^network\.([13])\.proj\.',
                     lambda m: f'stages.{(int(m.group(1)) + 1) // 2}.downsample.conv.conv.', new)
        new = re.sub(r'^network\.([13])\.norm\.',
                     lambda m: f'stages.{(int(m.group(1)) + 1) // 2}.downsample.conv.bn.', new)
        new = re.sub(r'^network\.5\.conv\.', 'stages.3.downsample.conv.conv.', new)
        new = re.sub(r'^network\.5\.bn\.', 'stages.3.downsample.conv.bn.', new)
        new = re.sub(r'^network\.5\.attn\.', 'stages.3.downsample.attn.', new)
        new = re.sub(r'^network\.([0246])\.',
                     lambda m: f'stages.{int(m.group(1)) // 2}.blocks.', new)
        for a, b in [('.q.local.0.', '.q.local.'), ('.q.proj.0.', '.q.proj.conv.'),
                     ('.q.proj.1.', '.q.proj.bn.'), ('.proj.1.', '.proj.conv.'),
                     ('.proj.2.', '.proj.bn.'), ('mlp.fc1.', 'mlp.fc1.conv.'),
                     ('mlp.norm1.', 'mlp.fc1.bn.'), ('mlp.mid.', 'mlp.mid.conv.'),
                     ('mlp.mid_norm.', 'mlp.mid.bn.'), ('mlp.fc2.', 'mlp.fc2.conv.'),
                     ('mlp.norm2.', 'mlp.fc2.bn.')]:
            new = new.replace(a, b)
        new = re.sub(r'\.(q|k|v|v_local|stride_conv)\.0\.', r'.\1.conv.', new)
        new = re.sub(r'\.(q|k|v|v_local|stride_conv)\.1\.', r'.\1.bn.', new)
        new = re.sub(r'layer_scale_([12])$', r'ls\1.gamma', new)
        if new.startswith('dist_head.'):
            new = 'head_dist.' + new[len('dist_head.'):]
        out[new] = value.reshape(-1) if new.endswith('.gamma') else value
    return out


def test_timm_file_gives_the_same_weights(imagenet_files, tmp_path):
    path, sd = imagenet_files['s1']
    timm_sd = _to_timm(sd)
    assert detect_format(timm_sd) == 'timm_v2' and detect_format(sd) == 'original_v2'
    torch.save(timm_sd, tmp_path / 'timm.pth')
    a = from_file('s1', path).state_dict()
    b = from_file('s1', tmp_path / 'timm.pth').state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize('resolution', [None, 25])
def test_convert_v2_files(tmp_path, resolution):
    sd = make_original_v2('s0', resolution, seed=5)
    src = tmp_path / 'src.pth'
    if resolution is None:
        save_imagenet_checkpoint(src, sd)
    else:
        save_mmcv1_checkpoint(src, {'backbone.' + k: v for k, v in sd.items()})
    s = convert_checkpoint(src, tmp_path / 'out.pth')
    assert (s['format'], s['model'], s['arch']) == ('original_v2', 'EfficientFormerV2', 's0')
    assert not s['missing'] and not s['left_over']
    text = format_summary(s)
    out = load_file(tmp_path / 'out.pth')
    weights = out['state_dict'] if resolution else out
    if resolution:
        assert 'mask-rcnn_efficientformerv2-s0_fpn_1x_coco.py' in text
        assert ('--cfg-options model.backbone.attn_bias_mode=official '
                'model.backbone.attn_bias_resolution=25') in text
        model = EfficientFormerV2('s0', attn_bias_mode='official', attn_bias_resolution=25)
        # a file of the backbone alone is written without the 'backbone.' prefix
        assert not any(k.startswith('backbone.') for k in weights)
        model.load_state_dict(weights, strict=True)
    else:
        model = from_file('s0', tmp_path / 'out.pth')
        ref = from_file('s0', src)
        for key, value in ref.state_dict().items():
            assert torch.equal(value, model.state_dict()[key]), key


# --------------------------------------------------------------------------- deploy
def _assert_rel_close(outs, refs, tol):
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        assert rel(out, ref) <= tol


@pytest.mark.parametrize('arch,mode', [('s0', 'relative'), ('s1', 'official'),
                                       ('s2', 'relative'), ('l', 'relative')])
def test_deployed_equals_unfused(arch, mode):
    model = randomize(EfficientFormerV2(arch, attn_bias_mode=mode)).eval()
    deployed = switch_to_deploy(copy.deepcopy(model))
    assert not any(isinstance(m, _BatchNorm) for m in deployed.modules())
    for size in [(96, 160), (160, 96), (130, 70)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            refs = model(x)
            _assert_rel_close(deployed(x), refs, 1e-4)
        if size == (96, 160):  # the autograd (out-of-place) path of the deployed blocks too
            with torch.enable_grad():
                _assert_rel_close([o.detach() for o in deployed(x)], refs, 1e-4)
    with pytest.raises(RuntimeError, match='deploy'):
        deployed.train()


def test_deploy_folds_keep_bn_eps():
    """Small running variances (weights scaled by sqrt(var)): a fold without eps fails 1e-5."""
    model = shrink_bn_variances(randomize(EfficientFormerV2('s0')).eval(), seed=2)
    deployed = switch_to_deploy(copy.deepcopy(model))
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        _assert_rel_close(deployed(x), model(x), 1e-5)
