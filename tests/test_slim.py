"""Latency-driven slimming on a small synthetic table: it reaches the target, every step's
latency is the table's sum over that arch's entries, every step keeps the arch valid, the
action taken is the one with the smallest score drop per millisecond saved, and bad inputs get
clear errors."""
import pytest
import torch

from mmef.latency import LatencyTable, SearchSpace, arch_entries, space_entries
from mmef.latency.slim import ACTIONS, candidates, slim, smallest_arch
from mmef.models import EfficientFormerSupernet

COST = {'stem': 1.0, 'down': 0.5, 'mb4df': 1.2, 'mb4d': 1.0, 'flatten': 0.1, 'mb3df': 2.5,
        'mb3d': 2.0, 'norm': 0.2, 'normt': 0.3}


def _table(family='v1', max_widths=(48, 96, 224, 448)):
    space = SearchSpace.default(family).with_widths(max_widths=max_widths)
    entries = {e.key: dict(ms=COST.get(e.kind, 1.0) * e.width / 16 * (4 - e.stage) ** 0.5)
               for e in space_entries(space)}
    meta = dict(family=family, input_size=[512, 512], batch=1, runtime='torch',
                device='cpu', space=space.to_dict())
    return LatencyTable(meta, entries)


def _supernet(seed=0):
    torch.manual_seed(seed)
    net = EfficientFormerSupernet('l1').eval()
    with torch.no_grad():
        for _, _, path in net.meta_paths():
            path.alpha.normal_()
    return net


def _score(arch):
    """A stand-in for validation accuracy: more blocks and channels score higher."""
    blocks = sum(c != 'identity' for s in arch['blocks'] for c in s)
    mb3d = sum(c == 'mb3d' for c in arch['blocks'][-1])
    return blocks + 2 * mb3d + sum(arch['widths']) / 100


def test_reaches_the_target_with_the_table_bookkeeping():
    net, table = _supernet(), _table()
    start = table.predict(net.backbone_arch(net.largest_arch()))
    target = 0.6 * start
    steps = slim(net, table, target, _score)
    assert steps[0]['action'] == 'start' and steps[0]['latency_ms'] == pytest.approx(start)
    assert steps[-1]['latency_ms'] <= target < steps[-2]['latency_ms']
    for step in steps:
        arch = net.check_subnet(step['arch'])  # valid: raises otherwise
        counted = arch_entries('v1', net.backbone_arch(arch))
        assert step['entries'] == {e.key: n for e, n in counted.items()}
        assert step['latency_ms'] == pytest.approx(
            sum(table.entries[key]['ms'] * n for key, n in step['entries'].items()))
        assert all(w % 16 == 0 for w in arch['widths'])
        assert step['score'] == pytest.approx(_score(arch))
    for before, step in zip(steps, steps[1:]):
        assert step['action'] in ACTIONS
        assert step['gain_ms'] == pytest.approx(before['latency_ms'] - step['latency_ms'])
        assert step['gain_ms'] > 0
        per_ms = {a: (before['score'] - t['score']) / (before['latency_ms'] - t['latency_ms'])
                  for a, t in step['tried'].items()}
        assert per_ms[step['action']] == min(per_ms.values())


def test_actions_keep_the_arch_valid():
    net = _supernet(seed=1)
    arch = net.largest_arch()
    seen = set()
    for step in range(40):
        options = candidates(net, arch, (16,) * 4)
        if not options:
            break
        for action, (what, new) in options.items():
            net.check_subnet(new)
            seen.add(action)
        arch = options[sorted(options)[step % len(options)]][1]
    assert seen == set(ACTIONS)
    # what each action does
    arch = net.largest_arch()
    options = candidates(net, arch, (16,) * 4)
    assert options['mb3d'][1]['blocks'][3] == ('mb4d',) * 4
    importance = net.importance()
    i, j = min(((i, j) for i in range(4) for j in range(len(arch['blocks'][i]))),
               key=lambda ij: importance[ij[0]][ij[1]])
    assert options['identity'][1]['blocks'][i][j] == 'identity'
    stage = min(range(4), key=lambda s: sum(importance[s]))
    assert options['narrow'][1]['widths'][stage] == arch['widths'][stage] - 16


def test_errors():
    net, table = _supernet(), _table()
    floor = table.predict(net.backbone_arch(smallest_arch(net, (16,) * 4)))
    with pytest.raises(ValueError, match='below the smallest latency'):
        slim(net, table, 0.9 * floor, _score)
    with pytest.raises(ValueError, match='v2 table'):
        slim(net, _table('v2', max_widths=(48, 96, 224, 448)), 100, _score)
    with pytest.raises(ValueError, match='wider than the table'):
        slim(net, _table(max_widths=(48, 96, 224, 432)), 100, _score)
    steps = slim(net, table, 1e9, _score)  # already within the budget
    assert len(steps) == 1


def _meta(table, size):
    table.meta.update(input_size=list(size), runtime_version='synthetic', threads=1,
                      dtype='float32', cpu=dict(model='none: a synthetic table'), date='-',
                      finished='-')
    return table


def test_slim_tool_writes_a_subnet_that_loads(tmp_path):
    """tools/slim.py on the demo supernet config (generated scenes): the found sub-network
    meets the target on the table; its config builds; its checkpoint loads through init_cfg
    with no missing or unexpected key; the loaded backbone computes what the supernet computes
    fixed to the found arch; arch, steps and the path plot are written."""
    import json
    import os.path as osp

    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmef.checkpoint import load_pretrained
    from tool_helpers import ROOT, as_argv, seg_options, tiny_ade
    from tools import slim as slim_tool
    from weights import randomize

    config = osp.join(ROOT, 'configs/demo/fpn_efficientformer-supernet-l1_scenes-demo.py')
    data = tiny_ade(str(tmp_path / 'ade'))
    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope('mmseg'):
        from mmseg.registry import MODELS
        model = MODELS.build(cfg.model)
    model.init_weights()
    randomize(model.backbone, seed=7)
    with torch.no_grad():
        for _, _, path in model.backbone.meta_paths():
            path.alpha.normal_()
    ckpt = str(tmp_path / 'supernet.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    table = _meta(_table(), (128, 128))
    table_file = str(tmp_path / 'table.json')
    table.save(table_file)
    start = table.predict(model.backbone.backbone_arch(model.backbone.largest_arch()))
    out = tmp_path / 'slim'
    steps = slim_tool.main([config, ckpt, '--table', table_file, '--target-ms',
                            str(0.5 * start), '--work-dir', str(out), '--val-batches', '2',
                            *as_argv(seg_options(data))])
    assert steps[-1]['latency_ms'] <= 0.5 * start < steps[-2]['latency_ms']
    assert len({s['score'] for s in steps}) > 1  # the loss depends on the arch
    actions = {s['action'] for s in steps}
    assert 'narrow' in actions, actions  # so that the neck's input channels are cut below
    found = json.loads((out / 'arch.json').read_text())
    assert found['arch'] == steps[-1]['backbone_arch']
    assert json.loads((out / 'steps.json').read_text())[-1]['arch'] == steps[-1]['arch']
    assert (out / 'path.png').stat().st_size > 1000

    sub_cfg = Config.fromfile(str(out / 'subnet_config.py'))
    assert sub_cfg.model.backbone.type == 'EfficientFormer'
    assert not any(h['type'] == 'SupernetTemperatureHook' for h in sub_cfg.custom_hooks)
    with DefaultScope.overwrite_default_scope('mmseg'):
        backbone = MODELS.build(sub_cfg.model.backbone)
    summary = load_pretrained(backbone, sub_cfg.model.backbone.init_cfg.checkpoint,
                              prefix='backbone.')
    assert summary['missing'] == [] and summary['unexpected'] == []
    supernet = model.backbone.eval()
    supernet.fix(steps[-1]['arch'])
    x = torch.randn(1, 3, 96, 128)
    for a, b in zip(backbone.eval()(x), supernet(x)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # the whole model (neck input channels cut to the sub-network's): the supernet model's
    # logits with the supernet fixed (outputs zero-padded for its neck)
    from mmengine.runner import load_checkpoint
    with DefaultScope.overwrite_default_scope('mmseg'):
        sub_cfg.model.backbone.init_cfg = None
        subnet = MODELS.build(sub_cfg.model).eval()
    load_checkpoint(subnet, str(out / 'subnet.pth'), strict=True)
    assert subnet.neck.lateral_convs[0].conv.in_channels == steps[-1]['arch']['widths'][0]
    supernet.fix(steps[-1]['arch'], full_width_outputs=True)
    with torch.no_grad():
        meta = [dict(img_shape=(96, 128))]
        ref = model.eval().encode_decode(x, meta)
        assert torch.allclose(subnet.encode_decode(x, meta), ref, atol=1e-4, rtol=1e-4)


def test_slim_tool_refuses_a_table_of_another_size_or_runtime_and_a_plain_backbone(tmp_path):
    import os.path as osp

    from tool_helpers import ROOT, SEG_DEMO
    from tools import slim as slim_tool
    config = osp.join(ROOT, 'configs/demo/fpn_efficientformer-supernet-l1_scenes-demo.py')
    table_file = str(tmp_path / 'table.json')
    _meta(_table(), (512, 512)).save(table_file)
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    out = tmp_path / 'o'
    # one-line errors (SystemExit), each naming the fix
    with pytest.raises(SystemExit, match=r'input_size \[512, 512\] in the table, \[128, 128\] '
                       r'asked.*--input-size H W'):
        slim_tool.main([config, str(ckpt), '--table', table_file, '--target-ms', '1',
                        '--work-dir', str(out)])
    with pytest.raises(SystemExit, match='runtime torch in the table, onnxruntime asked'):
        slim_tool.main([config, str(ckpt), '--table', table_file, '--target-ms', '1',
                        '--input-size', '512', '512', '--runtime', 'onnxruntime',
                        '--work-dir', str(out)])
    with pytest.raises(SystemExit, match='not an EfficientFormerSupernet'):
        slim_tool.main([SEG_DEMO, str(ckpt), '--table', table_file, '--target-ms', '1',
                        '--work-dir', str(out)])
    with pytest.raises(SystemExit, match=r'x.pth is not a readable checkpoint .*EOFError'):
        slim_tool.main([config, str(ckpt), '--table', table_file, '--target-ms', '1',
                        '--input-size', '512', '512', '--work-dir', str(out)])
    assert not out.exists()  # a refused run leaves nothing behind


def test_stops_at_exactly_the_target():
    """A target equal to a step's predicted latency is reached by that step: slimming stops
    there (latency <= target), not one step later."""
    net, table = _supernet(), _table()
    start = table.predict(net.backbone_arch(net.largest_arch()))
    first = slim(net, table, 0.95 * start, _score)[1]  # the first action taken
    steps = slim(net, table, first['latency_ms'], _score)
    assert len(steps) == 2 and steps[-1]['latency_ms'] == first['latency_ms']
