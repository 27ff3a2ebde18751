"""configs/metafile.yml and docs/model_zoo.md agree with the configs and with the converter."""
import os.path as osp
import re

import yaml

from mmef.checkpoint.convert import DENSE_CONFIGS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load():
    with open(osp.join(ROOT, 'configs', 'metafile.yml')) as f:
        return yaml.safe_load(f)


def test_metafile_entries_point_at_existing_configs_and_original_weights():
    meta = _load()
    with open(osp.join(ROOT, 'docs', 'model_zoo.md')) as f:
        zoo = f.read()
    names = [m['Name'] for m in meta['Models']]
    assert len(names) == len(set(names)) == 17  # V1: 3 ImageNet + 6 dense; V2: 4 + 4
    for model in meta['Models']:
        if model['Config'] is not None:
            assert osp.isfile(osp.join(ROOT, model['Config'])), model['Config']
            assert osp.basename(model['Config']) in zoo
            # the same line the converter prints and the docs show
            assert model['Cfg Options'] in zoo
            resolution = int(model['Cfg Options'].split('attn_bias_resolution=')[1].split()[0])
            task = 'detection' if resolution == 25 else 'segmentation'
            family, arch = re.search(r'(efficientformer(?:v2)?)-(l\d|s\d|l)_', model['Name']).groups()
            assert osp.basename(model['Config']) == DENSE_CONFIGS[task].format(family=family,
                                                                               arch=arch)
        for result in model['Results']:
            assert result['Source'] == 'reported by the paper'
        assert model['Converted From']['Weights'].startswith('https://drive.google.com/')
        assert model['Converted From']['Weights'] in zoo
        assert model['Conversion'].startswith('python tools/convert_checkpoint.py ')
        assert model['Weights'] is None and model['Converted SHA256'] is None  # none invented
