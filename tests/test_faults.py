"""Bad input to the backbone and to init_cfg checkpoint loading: clear errors or correct results."""
import os
import pickle
import zipfile

import pytest
import torch

from mmef.checkpoint import CheckpointError
from mmef.models import EfficientFormer, EfficientFormerV2
from _original_ref import make_original_backbone, save_imagenet_checkpoint


@pytest.fixture(scope='module')
def model():
    return EfficientFormer('l1').eval()


# ---- forward -----------------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(3, 64, 64), (1, 1, 3, 64, 64)])
def test_wrong_input_shape(model, shape):
    with pytest.raises(ValueError, match=r'expects a \(B, 3, H, W\) tensor, got shape'):
        model(torch.rand(*shape))


@pytest.mark.parametrize('channels', [1, 4])
def test_wrong_channel_count_names_in_channels(model, channels):
    with pytest.raises(ValueError, match=f'built with in_channels=3 and got an input with '
                       f'{channels} channels .*build it with in_channels={channels}'):
        model(torch.rand(1, channels, 64, 64))
    with pytest.raises(ValueError, match='built with in_channels=3'):
        EfficientFormerV2('s0').eval()(torch.rand(1, channels, 64, 64))


@pytest.mark.parametrize('size, last', [((16, 16), (1, 1)), ((32, 2000), (1, 63)),
                                        ((1, 1), (1, 1))])
def test_tiny_and_thin_inputs_give_correct_shapes(model, size, last):
    """Below one token per stride the convs still produce a 1-pixel map; the attention then runs
    on that grid, and its values match a plain re-run of the image alone in a bigger batch."""
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = model(x)
        single = model(x[1:])
    assert tuple(outs[3].shape[-2:]) == last
    for a, b in zip(outs, single):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a[1:], b, rtol=1e-4, atol=1e-4)


def test_empty_batch_gives_empty_maps(model):
    with torch.no_grad():
        outs = model(torch.rand(0, 3, 96, 64))
    assert [tuple(o.shape) for o in outs] == [(0, 48, 24, 16), (0, 96, 12, 8), (0, 224, 6, 4),
                                              (0, 448, 3, 2)]


def test_non_finite_input_is_not_hidden(model):
    x = torch.rand(1, 3, 64, 64)
    x[0, 0, 10, 10] = float('nan')
    with torch.no_grad():
        outs = model(x)
    assert torch.isnan(outs[0]).any()  # propagated, not silently replaced


def test_bf16_autocast_at_detection_size_with_large_activations():
    torch.manual_seed(0)
    model = EfficientFormer('l1', layer_scale_init_value=1.).eval()
    with torch.no_grad():
        for blk in model.stages[3].attn_blocks:
            blk.attn.qkv.weight.mul_(20)  # logits in the hundreds: a naive softmax overflows
        x = torch.randn(1, 3, 800, 1333) * 50
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
    assert outs[3].shape == (1, 448, 25, 42)
    assert all(torch.isfinite(o).all() for o in outs)


# ---- checkpoints through init_cfg ----------------------------------------------------------------

def init_from(path, arch='l1', **kwargs):
    m = EfficientFormer(arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    m.init_weights()
    return m


def test_missing_checkpoint_path(tmp_path):
    path = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match=f'checkpoint file {str(path)!r} does not exist'):
        init_from(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(IsADirectoryError, match='is a directory; pass the .pth file'):
        init_from(tmp_path)


def test_truncated_checkpoint(tmp_path):
    good = tmp_path / 'good.pth'
    save_imagenet_checkpoint(good, make_original_backbone('l1'))
    data = good.read_bytes()
    bad = tmp_path / 'truncated.pth'
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=f'{str(bad)!r} is truncated, corrupt or not a') \
            as info:
        init_from(bad)
    # torch's reason is quoted whole or cut at a word boundary, never mid-word
    reason = str(info.value).split('(', 1)[1].rsplit(')', 1)[0]
    assert reason.endswith(' ...') or len(reason) <= 300, reason


def test_clip_cuts_at_word_boundaries():
    from mmef.checkpoint.io import clip
    text = 'PytorchStreamReader failed reading zip archive: failed finding central directory ' * 9
    short = clip(text, 100)
    assert len(short) <= 100 and short.endswith(' ...')
    assert text.startswith(short[:-4]) and text[len(short) - 4] in ' ,;:'
    assert clip('short reason') == 'short reason'


def test_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / 'photos.pth'
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('readme.txt', 'hello')
    with pytest.raises(CheckpointError, match=f'{str(path)!r} is truncated, corrupt or not a'):
        init_from(path)


class _Exploit:
    """Unpickling this would create a file: the weights-only loader must refuse before that."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker, ))


def test_code_executing_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'epoch': 1, 'x': _Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError, match='refused to load .*evil.pth.*safe allowlist'):
        init_from(path)
    assert not marker.exists()
    # the same file through a plain pickle would have run the payload: the test is not vacuous
    with zipfile.ZipFile(path) as z:
        payload = z.read([n for n in z.namelist() if n.endswith('data.pkl')][0])
    pickle.loads(payload)
    assert marker.exists()


def test_state_dict_without_tensors(tmp_path):
    path = tmp_path / 'meta.pth'
    torch.save({'meta': {'epoch': 3}}, path)
    with pytest.raises(CheckpointError, match='holds no state dict of tensors'):
        init_from(path)


def test_every_checkpoint_error_names_the_file(tmp_path):
    path = tmp_path / 'l1_for_l7.pth'
    save_imagenet_checkpoint(path, make_original_backbone('l1'))
    with pytest.raises(CheckpointError) as err:
        init_from(path, arch='l7')
    assert str(path) in str(err.value) and 'stem.conv1.conv.weight' in str(err.value)


def test_load_state_dict_with_other_bias_resolution_says_which_setting():
    src = EfficientFormer('l1', attn_bias_mode='official', attn_bias_resolution=25)
    dst = EfficientFormer('l1')
    with pytest.raises(RuntimeError) as err:
        dst.load_state_dict(src.state_dict())
    assert ('stages.3.attn_blocks.0.attn.bias_table is a 25x25 attention-bias table in the '
            "checkpoint and 7x7 in the model: build the backbone with attn_bias_resolution=25 "
            "and attn_bias_mode='official'") in str(err.value)


@pytest.mark.parametrize('src, dst', [(EfficientFormer, EfficientFormerV2),
                                      (EfficientFormerV2, EfficientFormer)])
def test_file_of_the_other_family_names_the_backbone_to_use(tmp_path, src, dst):
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': src().state_dict()}, path)
    model = dst(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=f"holds {src.__name__} weights .* use "
                       f"type='{src.__name__}' for this file"):
        model.init_weights()
