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
