"""init_cfg=Pretrained with original ImageNet files (as published: 'model', 'args', optimizer)."""
import argparse
import logging
import pytest
import torch

from mmef.checkpoint import CheckpointError, load_file
from mmef.models import EfficientFormer
from _original_ref import ARCHS, make_original_backbone, original_forward, save_imagenet_checkpoint


def pretrained(arch, path, **kwargs):
    return EfficientFormer(arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)


@pytest.fixture(scope='module')
def l1_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'efficientformer_l1_300d.pth'
    save_imagenet_checkpoint(path, make_original_backbone('l1', seed=1))
    return path


def test_original_file_needs_the_allowlist(l1_file):
    """The published files hold an argparse.Namespace: plain weights_only loading refuses them
    unless the type is allowed; mmef allows it (and nothing executable)."""
    obj = load_file(l1_file)
    assert isinstance(obj['args'], argparse.Namespace)
    assert obj['epoch'] == 299


@pytest.mark.parametrize('arch', ['l1', 'l3'])
def test_imagenet_weights_reproduce_plain_recomputation(arch, tmp_path):
    path = tmp_path / f'{arch}.pth'
    sd = make_original_backbone(arch, seed=2)
    save_imagenet_checkpoint(path, sd)
    model = pretrained(arch, path).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    after = model.state_dict()
    # every tensor of the file except the classifier and the index buffers went somewhere
    loaded = [k for k in after if not k.startswith('norm') and 'num_batches' not in k]
    assert loaded and all(not torch.equal(before[k], after[k]) for k in loaded)
    # the output GroupNorms start fresh (weight 1, bias 0), as in the original dense code
    fresh = {f'norm{2 * i}.{p}': (torch.ones if p == 'weight' else torch.zeros)(c)
             for i, c in enumerate(ARCHS[arch][0]) for p in ('weight', 'bias')}
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        outs = model(x)
        ref = original_forward({**sd, **fresh}, x)  # 7x7 tokens: the plain ImageNet bias
    for out, r in zip(outs, ref):
        torch.testing.assert_close(out, r, rtol=1e-4, atol=1e-4)


def test_summary_names_classifier_as_expected_leftover(l1_file):
    from mmef.checkpoint import load_pretrained
    model = EfficientFormer('l1')
    summary = load_pretrained(model, l1_file)
    assert {k.split('.')[0] for k in summary['classifier']} == {'head', 'dist_head', 'norm'}
    assert summary['unexpected'] == []
    # only the fresh output norms are missing
    assert summary['missing'] == sorted(f'norm{i}.{p}' for i in range(4)
                                        for p in ('weight', 'bias'))
    assert len(summary['loaded']) == len(model.state_dict()) - 8


def test_bias_table_resized_as_grid_for_other_resolution(l1_file):
    model = pretrained('l1', l1_file, attn_bias_resolution=16)
    model.init_weights()
    table = load_file(l1_file)['model']['network.6.4.token_mixer.attention_biases']
    got = model.stages[3].attn_blocks[0].attn.bias_table
    assert got.shape == (8, 256)
    # written out here, not taken from mmef: the 7x7 table as an image, bicubic to 16x16
    expected = torch.nn.functional.interpolate(table.reshape(1, 8, 7, 7), size=(16, 16),
                                               mode='bicubic', align_corners=False)
    torch.testing.assert_close(got, expected.reshape(8, 256))
    # resized as a 2-D grid (bicubic over (|dy|, |dx|)), not as a flat vector of 49 entries
    flat = torch.nn.functional.interpolate(table[:, None], size=256, mode='linear')[:, 0]
    assert not torch.allclose(got, flat, atol=1e-2)


def test_wrong_variant_names_key_and_shapes(l1_file):
    model = pretrained('l3', l1_file)
    with pytest.raises(CheckpointError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'stem.conv1.conv.weight' in msg
    assert '(24, 3, 3, 3)' in msg and '(32, 3, 3, 3)' in msg
    assert str(l1_file) in msg


def test_file_with_no_matching_keys(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7),
                               'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1)}}, path)
    with pytest.raises(CheckpointError, match='only 0 of the .* backbone tensors matched'):
        pretrained('l1', path).init_weights()


def test_dense_original_file_in_relative_mode_says_which_mode(l1_file, tmp_path):
    sd = load_file(l1_file)['model']
    dense = {f'backbone.{k}': v for k, v in sd.items() if not k.startswith(('head', 'dist',
                                                                          'norm.'))}
    dense['backbone.network.6.4.token_mixer.attention_biases_seg'] = torch.zeros(8, 625)
    path = tmp_path / 'mask_rcnn.pth'
    torch.save({'meta': {}, 'state_dict': dense}, path)
    with pytest.raises(CheckpointError, match="attn_bias_mode='official'"):
        pretrained('l1', path).init_weights()


def test_our_own_file_round_trips(l1_file, tmp_path):
    src = pretrained('l1', l1_file)
    src.init_weights()
    path = tmp_path / 'mmef_l1.pth'
    torch.save({'state_dict': src.state_dict()}, path)
    dst = pretrained('l1', path)
    dst.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_loading_logs_a_summary(l1_file):
    from mmengine.logging import MMLogger
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        pretrained('l1', l1_file).init_weights()
    finally:
        logger.removeHandler(handler)
    log = '\n'.join(r.getMessage() for r in records)
    assert f'loaded 274 tensors from {l1_file}' in log
    assert "missing 8: ['norm0.bias'" in log
    assert "classifier left out as expected: 6 (['dist_head', 'head', 'norm'])" in log
    # what an ImageNet file expects of the model's data preprocessor (issue 19)
    assert ('ImageNet weights, trained on RGB images normalised with mean '
            '[123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375]') in log


@pytest.mark.parametrize('resolution', [7, 12])
@pytest.mark.parametrize('size', [(256, 352), (352, 256), (250, 330)])
def test_relative_mode_matches_independent_restatement(tmp_path, size, resolution):
    """Default 'relative' bias from an original ImageNet file, whole backbone, non-square grids
    in both orientations (8x11 and 11x8 tokens, and 8x11 from odd sizes), against
    tests/_original_ref.relative_grid_bias (written without mmef). At resolution 12 the 7x7
    table is first resized to 12x12 on loading, then to the grid seen."""
    path = tmp_path / 'l1.pth'
    sd = make_original_backbone('l1', seed=3)
    save_imagenet_checkpoint(path, sd)
    model = pretrained('l1', path, attn_bias_resolution=resolution).eval()
    model.init_weights()
    ref_sd = dict(sd)
    key = 'network.6.4.token_mixer.attention_biases'
    if resolution != 7:  # what loading does to the table, restated
        ref_sd[key] = torch.nn.functional.interpolate(
            sd[key].reshape(1, 8, 7, 7), size=(resolution, resolution), mode='bicubic',
            align_corners=False).reshape(8, -1)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = model(x)
        ref = original_forward(ref_sd, x, relative=True)
    for out, r in zip(outs, ref):
        assert out.shape == r.shape
        torch.testing.assert_close(out, r, rtol=1e-4, atol=1e-4)
    # the bias matters here: the original's own ImageNet arithmetic is undefined off 7x7, and
    # a zero bias gives clearly different outputs
    zero_sd = dict(ref_sd, **{key: torch.zeros_like(ref_sd[key])})
    with torch.no_grad():
        zero = original_forward(zero_sd, x, relative=True)[-1]
    assert (zero - outs[-1]).abs().max() > 1e-2
