"""Regression tests for what a new user hit (issue 11): README snippets against mmdet's and
mmseg's own configs, the clone imported as a namespace package, init_cfg forms, converted
checkpoints keeping their classes, and errors that name the problem and the fix."""
import io
import os
import os.path as osp
import re
import subprocess

import pytest
import torch
from mmengine.config import Config

import mmef  # noqa: F401
from mmef.checkpoint import CheckpointError, load_file
from mmef.checkpoint.convert import convert_checkpoint
from mmef.models import EfficientFormer
from _original_ref import make_original_backbone, original_forward, save_imagenet_checkpoint
from tool_helpers import (PYTHON, ROOT, SEG_DEMO, as_argv, seg_options, subprocess_env,
                          tiny_ade)
from tools import test as test_tool
from tools import train as train_tool


def readme_configs():
    """{file name: text} of the README's config snippets (```python blocks whose first line is
    a '# NAME.py' comment)."""
    with open(osp.join(ROOT, 'README.md')) as f:
        text = f.read()
    return {m.group(1): m.group(0)[len('```python\n'):-len('```')]
            for m in re.finditer(r'```python\n# (\S+\.py)\n.*?```', text, re.S)}


@pytest.fixture(scope='module')
def imagenet_l1(tmp_path_factory):
    """An original-format ImageNet L1 file at the path the README snippets name."""
    root = tmp_path_factory.mktemp('readme')
    os.makedirs(root / 'checkpoints')
    sd = make_original_backbone('l1', seed=4)
    save_imagenet_checkpoint(root / 'checkpoints' / 'efficientformer_l1_300d.pth', sd)
    return root, sd


def _build_from_snippet(name, root, monkeypatch):
    path = root / name
    path.write_text(readme_configs()[name])
    monkeypatch.chdir(root)  # the snippet's checkpoint path is relative, as a user's would be
    cfg = Config.fromfile(str(path))
    scope = cfg.default_scope
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        if scope == 'mmdet':
            import mmdet.models  # noqa: F401
            from mmdet.registry import MODELS
        else:
            import mmseg.models  # noqa: F401
            from mmseg.registry import MODELS
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
        model.init_weights()
    return cfg, model.eval()


def test_readme_has_detector_and_segmentor_snippets():
    names = set(readme_configs())
    assert {'retinanet_efficientformer-l1_fpn_1x_coco.py',
            'upernet_efficientformer-l1_4xb4-80k_ade20k-512x512.py'} <= names, names


def test_readme_retinanet_snippet(imagenet_l1, monkeypatch):
    root, sd = imagenet_l1
    cfg, model = _build_from_snippet('retinanet_efficientformer-l1_fpn_1x_coco.py', root,
                                     monkeypatch)
    assert cfg.model.type == 'RetinaNet'
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        feats = model.backbone(x)
        cls_scores, _ = model(x, mode='tensor')
    # the ImageNet weights were loaded: the backbone equals the original arithmetic at 7x7
    # tokens (224x224) and gives 5 FPN levels to the head here
    assert len(cls_scores) == 5
    assert [f.shape[1] for f in feats] == [48, 96, 224, 448]
    x224 = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got = model.backbone(x224)[-1]
    ref = original_forward(sd, x224)[-1]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_readme_upernet_snippet(imagenet_l1, monkeypatch):
    root, sd = imagenet_l1
    cfg, model = _build_from_snippet('upernet_efficientformer-l1_4xb4-80k_ade20k-512x512.py',
                                     root, monkeypatch)
    assert cfg.model.decode_head.type == 'UPerHead'
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        logits = model(x, mode='tensor')
    assert logits.shape == (1, 150, 32, 24)
    x224 = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got = model.backbone(x224)[-1]
    torch.testing.assert_close(got, original_forward(sd, x224)[-1], rtol=1e-4, atol=1e-4)


def test_clone_parent_folder_imports_the_package(tmp_path):
    """Python started in the folder that contains a clone named 'mmef' (here a link to this
    repository): 'import mmef' must give the package, not the clone as an empty namespace
    package (with which custom_imports "succeeds" and nothing registers). scripts/setup.sh
    installs mmef in editable compat mode (the repository on sys.path) for this reason."""
    os.symlink(ROOT, tmp_path / 'mmef')
    env = dict(subprocess_env(), PYTHONPATH='')  # only what the installation provides
    code = ("from mmengine.config import Config\n"
            "open('c.py', 'w').write(\"custom_imports = dict(imports=['mmef'], "
            "allow_failed_imports=False)\")\n"
            "Config.fromfile('c.py')\n"
            "import mmef\n"
            "from mmdet.registry import MODELS\n"
            "print(mmef.__file__, MODELS.get('EfficientFormer'))\n")
    proc = subprocess.run([PYTHON, '-c', code], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'mmef/__init__.py' in proc.stdout and 'EfficientFormer' in proc.stdout, proc.stdout


# ------------------------------------------------------------------------------ init_cfg forms
@pytest.fixture(scope='module')
def ddp_file(tmp_path_factory):
    """A DataParallel-saved ImageNet file ('module.' before every key)."""
    sd = make_original_backbone('l1', seed=5)
    path = tmp_path_factory.mktemp('ddp') / 'ddp.pth'
    save_imagenet_checkpoint(path, {'module.' + k: v for k, v in sd.items()})
    return path, sd


def _loaded_equals_reference(model, sd):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got = model.eval()(x)[-1]
    torch.testing.assert_close(got, original_forward(sd, x)[-1], rtol=1e-4, atol=1e-4)


def test_dataparallel_file_through_init_cfg(ddp_file, tmp_path):
    path, sd = ddp_file
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    _loaded_equals_reference(model, sd)
    # and the converter takes the same file, to the same weights
    convert_checkpoint(path, tmp_path / 'out.pth')
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    own = model.state_dict()
    for key, value in converted.items():
        if key in own:
            assert torch.equal(value, own[key]), key


def test_list_init_cfg_loads_and_applies_the_others(ddp_file):
    path, sd = ddp_file
    model = EfficientFormer('l1', init_cfg=[
        dict(type='Constant', layer='GroupNorm', val=2., bias=0.5),
        dict(type='Pretrained', checkpoint=str(path))])
    model.init_weights()
    assert torch.equal(model.norm3.weight, torch.full((448, ), 2.))
    assert torch.equal(model.norm3.bias, torch.full((448, ), 0.5))
    loaded = model.stages[3].attn_blocks[0].attn.bias_table
    assert torch.equal(loaded, sd['network.6.4.token_mixer.attention_biases'])


def test_bad_init_cfg_entries_are_refused():
    with pytest.raises(ValueError, match='init_cfg entries must be dicts with a type'):
        EfficientFormer('l1', init_cfg=['efficientformer_l1_300d.pth']).init_weights()
    with pytest.raises(TypeError, match="unexpected keyword argument 'checkpiont'"):
        EfficientFormer('l1', init_cfg=dict(type='Pretrained', checkpiont='x.pth')).init_weights()


def test_map_location_is_honoured(ddp_file, monkeypatch):
    path, _ = ddp_file
    seen = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        seen.append(kwargs.get('map_location'))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', recording_load)
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                map_location='meta'))
    with pytest.raises(Exception):
        model.init_weights()  # tensors on 'meta' cannot be copied into the model...
    assert seen == ['meta']  # ...but the file was read where the user asked


# ------------------------------------------------------------------------- converted classes
def test_converting_own_checkpoint_keeps_dataset_meta(tmp_path):
    model = EfficientFormer('l1')
    state = {'backbone.' + k: v for k, v in model.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(3, 128, 1, 1)
    meta = {'epoch': 3, 'dataset_meta': {'classes': ('sky', 'road', 'tree'),
                                         'palette': [[0, 0, 255], [128, 128, 128], [0, 255, 0]]}}
    torch.save({'meta': meta, 'state_dict': state, 'optimizer': {}}, tmp_path / 'own.pth')
    summary = convert_checkpoint(tmp_path / 'own.pth', tmp_path / 'own_mmef.pth')
    out = load_file(tmp_path / 'own_mmef.pth')
    assert out['meta']['dataset_meta']['classes'] == ('sky', 'road', 'tree')
    assert out['meta']['dataset_meta']['palette'][1] == [128, 128, 128]
    assert set(out['state_dict']) == set(state)
    assert summary['dataset_meta']['classes'] == ('sky', 'road', 'tree')


# -------------------------------------------------------------------------------- clear errors
@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return tiny_ade(str(tmp_path_factory.mktemp('ade') / 'ade'))


def test_resume_from_corrupt_checkpoint_names_the_file(tmp_path, ade):
    bad = tmp_path / 'iter_2.pth'
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.zeros(100)}}, buf)
    bad.write_bytes(buf.getvalue()[:150])
    with pytest.raises(CheckpointError, match=r"--resume: cannot resume from .*iter_2\.pth.* "
                                              r"truncated, corrupt"):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--resume', str(bad)] +
                        as_argv(seg_options(ade)))


@pytest.mark.parametrize('options,fragment', [
    ({'model.backbone.out_indices': '(1,2,3)'},
     r'model\.neck\.in_channels=\[48, 96, 224, 448\] does not match .* outputs \[96, 224, 448\]'),
    ({'model.backbone.arch': 'l3'},
     r'model\.neck\.in_channels=\[48, 96, 224, 448\] does not match .* \[64, 128, 320, 512\]'),
])
def test_neck_channels_that_do_not_match_the_backbone(tmp_path, options, fragment):
    with pytest.raises(ValueError, match=fragment):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path)] + as_argv(options))


def test_decode_head_channels_checked_without_neck(tmp_path):
    cfg = tmp_path / 'upernet.py'
    cfg.write_text(readme_configs()['upernet_efficientformer-l1_4xb4-80k_ade20k-512x512.py']
                   .replace('in_channels=[48, 96, 224, 448]', 'in_channels=[64, 128, 320, 512]'))
    with pytest.raises(ValueError, match=r'model\.decode_head\.in_channels=\[64, 128, 320, 512\]'):
        train_tool.main([str(cfg), '--work-dir', str(tmp_path / 'w')])


@pytest.mark.parametrize('split', ['train', 'test'])
def test_empty_data_tree(tmp_path, split):
    empty = tmp_path / 'empty_ade'
    for sub in ('images/training', 'images/validation', 'annotations/training',
                'annotations/validation'):
        os.makedirs(empty / sub)
    options = as_argv(seg_options(str(empty)))
    with pytest.raises(ValueError, match=rf'the {split} dataset \(ADE20KDataset\) is empty: '
                                         rf'no samples under data_root=.*empty_ade'):
        if split == 'train':
            train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path / 'w')] + options)
        else:
            model = EfficientFormer('l1')  # any readable checkpoint: the data check comes first
            torch.save({'state_dict': model.state_dict()}, tmp_path / 'w.pth')
            test_tool.main([SEG_DEMO, str(tmp_path / 'w.pth'), '--work-dir',
                            str(tmp_path / 'w')] + options)


def test_caffe_style_normalisation_with_imagenet_weights_warns():
    """An EfficientFormer with ImageNet weights in a config that normalises the caffe way (BGR,
    mean 102.98 / 115.95 / 122.77, std 1, as mmdet's *caffe* configs do) would train silently
    with the wrong input statistics: the tools' config check warns with the values to set."""
    import warnings

    from mmef.engine import check_input_normalisation, load_config
    from tool_helpers import ROOT
    path = f'{ROOT}/configs/mask_rcnn/mask-rcnn_efficientformer-l1_fpn_1x_coco.py'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        cfg, _ = load_config(path)
    assert not [w for w in caught if 'data_preprocessor' in str(w.message)]  # ours is consistent
    assert check_input_normalisation(cfg) is None
    caffe = {'model.data_preprocessor.mean': [102.9801, 115.9465, 122.7717],
             'model.data_preprocessor.std': [1.0, 1.0, 1.0],
             'model.data_preprocessor.bgr_to_rgb': False}
    with pytest.warns(UserWarning, match=r'mean=\[102.9801.*bgr_to_rgb=False.*set '
                      r'model.data_preprocessor.mean=\[123.675, 116.28, 103.53\], '
                      r'model.data_preprocessor.std=\[58.395, 57.12, 57.375\] and '
                      r'model.data_preprocessor.bgr_to_rgb=True'):
        load_config(path, caffe)
    cfg.model.backbone.init_cfg = None  # random init: nothing to be consistent with
    cfg.merge_from_dict(caffe)
    assert check_input_normalisation(cfg) is None
