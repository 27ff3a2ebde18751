"""attn_bias_mode='official' reproduces the original dense (COCO / ADE20K) backbone exactly.

The reference is tests/_original_ref.py: an independent plain-torch forward of original-format
state dicts (no mmef code). Weights are random and non-trivial: BN statistics, O(1) layer scales,
random attention_biases_seg tables.
"""
import pytest
import torch

from _original_ref import make_original_backbone, original_forward, save_mmcv1_checkpoint
from mmef.checkpoint import CheckpointError
from mmef.checkpoint.convert import convert_checkpoint
from mmef.checkpoint.keys import to_mmef
from mmef.models import EfficientFormer

RTOL = 1e-5
SIZES = [(256, 320), (250, 330)]  # stage-3 grids 8x10 and 8x11: not the table's R x R


def _rel(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


def _image(hw, seed=0):
    return torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('arch,resolution', [('l1', 25), ('l3', 16)])
def test_official_mode_reproduces_original_dense_forward(arch, resolution):
    original = make_original_backbone(arch, resolution, seed=11)
    model = EfficientFormer(arch, attn_bias_mode='official',
                            attn_bias_resolution=resolution).eval()
    model.load_state_dict(to_mmef(original), strict=True)
    relative = EfficientFormer(arch, attn_bias_mode='relative',
                               attn_bias_resolution=resolution).eval()
    relative.load_state_dict(to_mmef(original), strict=True)
    for hw in SIZES:
        x = _image(hw)
        with torch.no_grad():
            ref = original_forward(original, x)
        outs = _outputs(model, x)
        assert [o.shape for o in outs] == [r.shape for r in ref]
        for level, (out, r) in enumerate(zip(outs, ref)):
            assert _rel(out, r) <= RTOL, (arch, resolution, hw, level, _rel(out, r))
        # the comparison can fail: the relative-offset bias gives another last stage here
        assert _rel(_outputs(relative, x)[3], ref[3]) > 10 * RTOL


def test_official_equals_relative_on_the_tables_own_grid():
    """At an R x R token grid both modes use the table as trained: the original is exact there."""
    original = make_original_backbone('l1', 16, seed=12)
    x = _image((512, 512))  # stage-3 grid 16 x 16
    with torch.no_grad():
        ref = original_forward(original, x)
    for mode in ('official', 'relative'):
        model = EfficientFormer('l1', attn_bias_mode=mode, attn_bias_resolution=16).eval()
        model.load_state_dict(to_mmef(original), strict=True)
        out = _outputs(model, x)
        assert _rel(out[3], ref[3]) <= RTOL, mode


def test_batch_and_train_mode_bias_match_eval(tmp_path):
    """Batch of 2 images; the training-mode (uncached, differentiable) bias gives the same."""
    original = make_original_backbone('l1', 25, seed=13)
    model = EfficientFormer('l1', attn_bias_mode='official', attn_bias_resolution=25)
    model.load_state_dict(to_mmef(original), strict=True)
    x = torch.cat([_image((250, 330), 1), _image((250, 330), 2)])
    with torch.no_grad():
        ref = original_forward(original, x)
    model.eval()
    out_eval = _outputs(model, x)
    model.train()
    for m in model.modules():  # BN must use running statistics to compare with the reference
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    out_train = model(x)
    out_train[3].sum().backward()  # the official bias is differentiable in training
    table = model.stages[3].attn_blocks[0].attn.bias_table
    assert table.grad is not None and table.grad.abs().sum() > 0
    for a, b, r in zip(out_eval, out_train, ref):
        assert _rel(a, r) <= RTOL and _rel(b.detach(), r) <= RTOL


@pytest.mark.parametrize('converted', [False, True])
def test_original_runner_file_through_init_cfg(tmp_path, converted):
    """The original COCO file (or its conversion) loads via init_cfg Pretrained, same outputs."""
    original = make_original_backbone('l1', 25, seed=14)
    src = tmp_path / 'coco.pth'
    save_mmcv1_checkpoint(src, {'backbone.' + k: v for k, v in original.items()})
    path = src
    if converted:
        path = tmp_path / 'coco_mmef.pth'
        summary = convert_checkpoint(src, path)
        assert summary['needs']['attn_bias_mode'] == 'official'
        assert summary['needs']['attn_bias_resolution'] == 25
    model = EfficientFormer('l1', attn_bias_mode='official', attn_bias_resolution=25,
                            init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    model.eval()
    x = _image((256, 320), 3)
    with torch.no_grad():
        ref = original_forward(original, x)
    for out, r in zip(_outputs(model, x), ref):
        assert _rel(out, r) <= RTOL


def test_converted_dense_file_in_default_mode_names_the_setting(tmp_path):
    """A converted COCO file holds 25x25 tables: the ImageNet-style default build is told why."""
    original = make_original_backbone('l1', 25, seed=15)
    save_mmcv1_checkpoint(tmp_path / 'coco.pth', {'backbone.' + k: v for k, v in original.items()})
    convert_checkpoint(tmp_path / 'coco.pth', tmp_path / 'coco_mmef.pth')
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained',
                                                checkpoint=str(tmp_path / 'coco_mmef.pth')))
    with pytest.raises(CheckpointError) as err:
        model.init_weights()
    msg = str(err.value)
    assert str(tmp_path / 'coco_mmef.pth') in msg
    assert "attn_bias_mode='official', attn_bias_resolution=25" in msg
    assert '(8, 625)' in msg and '(8, 49)' in msg
