"""Slimming an EfficientFormerV2Supernet (mmef.latency.slim, shared with V1) on a synthetic V2
table: what each action does, that every step stays in the supernet's trained range and is the
table's sum over its entries, that the step taken has the smallest score drop per unit of cost
(milliseconds, or the V2 paper's Mobile Efficiency Score with parameter counts checked against
real modules), and tools/slim.py end to end on the V2 supernet demo config: a recalibrated,
inherited EfficientFormerV2 sub-network whose config trains with the plain loop."""
import math

import pytest
import torch

from mmef.latency import LatencyTable, SearchSpace, arch_entries, space_entries
from mmef.latency.slim import V2_ACTIONS, backbone_params, candidates, slim, smallest_arch
from mmef.models import EfficientFormerV2, EfficientFormerV2Supernet

KIND = {'stem': 1.0, 'down': 0.5, 'adown': 2.0, 'ffn': 1.0, 'ffnf': 1.1, 'attn': 3.0,
        'attnf': 3.2}


def _table(max_widths=(32, 48, 120, 224), size=(512, 512)):
    space = SearchSpace.default('v2').with_widths(max_widths=max_widths)
    entries = {e.key: dict(ms=KIND.get(e.kind, 0.2) * e.width / 16 * (4 - e.stage) ** 0.5
                           * (1 + (e.ratio or 0) / 4))
               for e in space_entries(space)}
    meta = dict(family='v2', input_size=list(size), batch=1, runtime='torch', device='cpu',
                space=space.to_dict(), runtime_version='synthetic', threads=1,
                dtype='float32', cpu=dict(model='none: a synthetic table'), date='-',
                finished='-')
    return LatencyTable(meta, entries)


def _supernet():
    return EfficientFormerV2Supernet('s1', min_widths=(16, 24, 48, 96))


def _score(arch):
    """A stand-in for validation accuracy: more blocks, channels and hidden units score higher."""
    return (sum(arch['depths']) + 3 * arch['num_attn_blocks'] + sum(arch['widths']) / 8
            + sum(r for stage in arch['mlp_ratios'] for r in stage) / 2)


def test_what_each_action_does():
    net = _supernet()
    arch = net.largest_arch()  # S1: depths (3, 3, 9, 6), 2 attention blocks
    options = candidates(net, arch, net.min_widths)
    assert list(options) == [f'ratio:{i}' for i in (1, 2, 3, 4)] + ['attention'] + [
        f'block:{i}' for i in (1, 2, 3, 4)] + [f'narrow:{i}' for i in (1, 2, 3, 4)]
    # stage 3 ratios (4, 4, 3, 3, 3, 3, 4, 4, 4): the ratio-4 block nearest the middle is 7th
    assert options['ratio:3'][1]['mlp_ratios'][2] == (4, 4, 3, 3, 3, 3, 3, 4, 4)
    assert options['ratio:1'][1]['mlp_ratios'][0] == (4, 3, 4)
    attn = options['attention'][1]
    assert attn['num_attn_blocks'] == 1 and attn['depths'] == arch['depths']
    assert net.source_blocks(attn['depths'], 1)[2] == (0, 1, 2, 3, 4, 5, 6, 7, 8)
    block = options['block:4'][1]  # the last FFN block of stage 4 (its 4th) goes
    assert block['depths'] == (3, 3, 9, 5)
    assert block['mlp_ratios'][3] == (4, 4, 3, 4, 4)
    assert options['narrow:2'][1]['widths'] == (32, 40, 120, 224)
    # the trained range bounds the actions: nothing below min widths / depths / attention
    small = net.smallest_arch()
    assert candidates(net, small, net.min_widths) == {}
    assert smallest_arch(net, net.min_widths) == small


def test_reaches_the_target_with_the_table_bookkeeping():
    net, table = _supernet(), _table()
    start = table.predict(net.largest_arch())
    target = 0.5 * start
    steps = slim(net, table, target, _score)
    assert steps[-1]['latency_ms'] <= target < steps[-2]['latency_ms']
    for step in steps:
        arch = net.check_subnet(step['arch'])
        counted = arch_entries('v2', arch)
        assert step['entries'] == {e.key: n for e, n in counted.items()}
        assert step['latency_ms'] == pytest.approx(
            sum(table.entries[key]['ms'] * n for key, n in step['entries'].items()))
        assert all(lo <= w and w % 8 == 0 for lo, w in zip(net.min_widths, arch['widths']))
        assert all(lo <= d for lo, d in zip(net.min_depths, arch['depths']))
    for before, step in zip(steps, steps[1:]):
        per_ms = {a: (before['score'] - t['score']) / (before['latency_ms'] - t['latency_ms'])
                  for a, t in step['tried'].items()}
        assert step['action'] == min(per_ms, key=per_ms.get).split(':')[0]
    assert {s['action'] for s in steps[1:]} <= set(V2_ACTIONS)
    assert len({s['action'] for s in steps[1:]}) >= 3


def test_mes_cost_and_parameter_counts():
    net, table = _supernet(), _table()
    start = table.predict(net.largest_arch())
    steps = slim(net, table, 0.8 * start, _score, cost='mes', mes_weights=(0.5, 1.0))
    for step in steps[:3]:  # parameter counts: those of the real module
        real = sum(p.numel() for p in EfficientFormerV2(step['arch']).parameters())
        assert step['params_m'] == pytest.approx(real / 1e6)
    for before, step in zip(steps, steps[1:]):
        def gain(t):
            return (0.5 * math.log(before['latency_ms'] / t['latency_ms'])
                    + 1.0 * math.log(before['params_m'] / t['params_m']))
        per = {a: (before['score'] - t['score']) / gain(t) for a, t in step['tried'].items()}
        assert step['action'] == min(per, key=per.get).split(':')[0]
        assert step['gain'] == pytest.approx(gain(step))
    with pytest.raises(ValueError, match='cost must be one of'):
        slim(net, table, start, _score, cost='flops')
    assert backbone_params('v2', EfficientFormerV2.parse_arch('s0')) == sum(
        p.numel() for p in EfficientFormerV2('s0').parameters())


def test_errors():
    net, table = _supernet(), _table()
    with pytest.raises(ValueError, match='EfficientFormerV2; the table is a v1 table'):
        slim(net, LatencyTable(dict(table.meta, family='v1',
                                    space=SearchSpace.default('v1').to_dict()), {}), 1, _score)
    with pytest.raises(ValueError, match=r'wider than the table at stages \[4\]'):
        slim(net, _table(max_widths=(32, 48, 120, 216)), 100, _score)
    floor = table.predict(net.smallest_arch())
    with pytest.raises(ValueError, match='below the smallest latency.*smallest trained'):
        slim(net, table, 0.9 * floor, _score)


def test_slim_tool_on_the_v2_supernet(tmp_path):
    """tools/slim.py on the V2 supernet demo config (small supernet, generated scenes): the
    found EfficientFormerV2 sub-network's config builds with mmengine's plain loop, its
    checkpoint loads strictly, and the model computes what the supernet model computes with
    the found arch fixed and its statistics recalibrated on the same training batches."""
    import json

    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner import load_checkpoint

    from test_sandwich import SMALL, small_config
    from tool_helpers import as_argv, seg_options, tiny_ade
    from tools import slim as slim_tool
    from weights import randomize

    config = small_config(tmp_path)
    data = tiny_ade(str(tmp_path / 'ade'))
    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope('mmseg'):
        from mmseg.registry import MODELS
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
    model.init_weights()
    randomize(model.backbone, seed=3)
    ckpt = str(tmp_path / 'supernet.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    table = _table(max_widths=SMALL['widths'], size=(128, 128))
    table_file = str(tmp_path / 'table.json')
    table.save(table_file)
    start = table.predict(SMALL)
    out = tmp_path / 'slim'
    opts = seg_options(data)
    opts['train_dataloader.batch_size'] = 2
    steps = slim_tool.main([config, ckpt, '--table', table_file, '--target-ms',
                            str(0.85 * start), '--work-dir', str(out), '--val-batches', '1',
                            '--calib-batches', '1', *as_argv(opts)])
    assert steps[-1]['latency_ms'] <= 0.85 * start < steps[-2]['latency_ms']
    found = json.loads((out / 'arch.json').read_text())
    assert found['arch'] == steps[-1]['backbone_arch'] and found['calib_batches'] == 1
    sub_cfg = Config.fromfile(str(out / 'subnet_config.py'))
    assert sub_cfg.model.backbone.type == 'EfficientFormerV2'
    assert sub_cfg.train_cfg.type == 'IterBasedTrainLoop' and 'num_random' not in sub_cfg.train_cfg
    assert sub_cfg.train_cfg.max_iters == 2  # the supernet config's schedule carries over
    with DefaultScope.overwrite_default_scope('mmseg'):
        sub_cfg.model.backbone.init_cfg = None
        subnet = MODELS.build(sub_cfg.model).eval()
        load_checkpoint(subnet, str(out / 'subnet.pth'), strict=True)
    arch = steps[-1]['arch']
    assert subnet.backbone.arch == EfficientFormerV2.parse_arch(arch)
    # the checkpoint's BatchNorm statistics are the sub-network's own (recalibrated), not the
    # supernet's slices; with them written into the supernet's slices, the supernet model with
    # the arch fixed computes what the sub-network model computes (every other weight inherited)
    names = model.backbone.subnet_keys(arch)
    own, recal = model.state_dict(), 0
    with torch.no_grad():
        for key, value in subnet.state_dict().items():
            if key.endswith(('running_mean', 'running_var')):
                source = own['backbone.' + names[key[9:]]] if key.startswith('backbone.') \
                    else own[key]
                target = source[tuple(slice(0, n) for n in value.shape)]
                recal += key.startswith('backbone.') and not torch.allclose(target, value)
                target.copy_(value)
    assert recal > 10
    model.backbone.fix(arch, full_width_outputs=True)
    x = torch.randn(1, 3, 64, 96)
    meta = [dict(img_shape=(64, 96))]
    with torch.no_grad():
        assert torch.allclose(subnet.encode_decode(x, meta), model.eval().encode_decode(x, meta),
                              atol=1e-4, rtol=1e-4)


def test_measure_found_compares_the_measurement_with_the_target(capsys):
    """--measure: the found backbone timed deployed as the table was (runtime, threads, size)."""
    from mmef.latency.slim import measure_found
    table = _table(size=(64, 64))
    arch = EfficientFormerV2.parse_arch('s0')
    ok = measure_found('v2', arch, table, target_ms=1e6, tolerance=0, runs=3)
    assert ok['meets_target'] and 0 < ok['measured_ms'] < 1e6
    missed = measure_found('v2', arch, table, target_ms=1e-3, tolerance=0.1, runs=3)
    assert not missed['meets_target']
    out = capsys.readouterr().out
    assert 'MISSES it' in out and 'the table is of none: a synthetic table' in out
