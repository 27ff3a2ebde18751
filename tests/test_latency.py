"""Latency tables (mmef.latency, tools/latency_table.py): the search space, the entries an arch
uses, table files, predictions, refusals and resumable builds. Tiny sizes and few runs: the
timings themselves are not asserted (the prediction accuracy is measured by the tool and
recorded in docs/latency.md)."""
import importlib.util
import json
import math
import os.path as osp
import statistics
import sys

import pytest
import torch

from mmef.latency import (Entry, LatencyTable, MissingEntries, SearchSpace, TableMismatch,
                          arch_entries, build_table, space_entries)
from mmef.latency import table as table_module
from mmef.latency.blocks import KINDS, build_entry, context_of, stage_sizes
from mmef.models import EfficientFormer, EfficientFormerV2
from tool_helpers import ROOT

sys.path.insert(0, osp.join(ROOT, 'tools'))
import latency_table as tool  # noqa: E402

SIZE = (40, 56)  # stages 10x14, 5x7, 3x4, 2x2
NARROW = dict(min_widths=16, max_widths=32)


def tiny_table(tmp_path, family='v1', runtime='torch', keys=None, name='t.json', space=None,
               sweeps=None, busy_spread=None):
    space = space or SearchSpace.default(family).with_widths(**NARROW)
    return build_table(family, SIZE, str(tmp_path / name), runtime, threads=1, runs=2, warmup=1,
                       space=space, keys=keys, progress=False, sweeps=sweeps,
                       busy_spread=busy_spread)


# ---------------------------------------------------------------------------- search space
def test_default_spaces_span_the_released_variants():
    v1, v2 = SearchSpace.default('v1'), SearchSpace.default('v2')
    assert (v1.step, v1.max_widths, v1.max_depths) == (16, (96, 192, 384, 768), (6, 6, 18, 8))
    assert (v2.step, v2.max_widths, v2.max_depths) == (8, (40, 80, 192, 384), (5, 5, 15, 10))
    for name in EfficientFormer.arch_settings:
        assert v1.violations(name) == []
    for name in EfficientFormerV2.arch_settings:
        assert v2.violations(name) == []


def test_space_refuses_archs_outside_it():
    v1 = SearchSpace.default('v1')
    bad = dict(widths=(40, 96, 224, 448), depths=(3, 2, 6, 9), num_attn_blocks=1)
    with pytest.raises(ValueError, match='stage 0 width 40 is not a multiple of 16.*stage 3 '
                       r'depth 9 is not in \[1, 8\]'):
        v1.check(bad)
    with pytest.raises(ValueError, match='min_widths must be 4 multiples of 16'):
        v1.with_widths(min_widths=24)
    with pytest.raises(ValueError, match='exceed max_widths'):
        v1.with_widths(min_widths=64, max_widths=32)


def test_v2_mlp_ratio_outside_the_space_is_a_violation():
    import copy

    space = SearchSpace.default('v2')
    arch = copy.deepcopy(space.arch('s0'))
    assert space.violations(arch) == []
    ratios = [list(r) for r in arch['mlp_ratios']]
    ratios[2][1] = 5
    arch['mlp_ratios'] = ratios
    assert space.violations(arch) == [f'MLP ratios [5] are not among {list(space.mlp_ratios)}']


def test_entry_contexts_and_strided_attention_fixed():
    """Fixed expectations (not recomputed with the function under test): the first MB3D runs
    after the stage's last MB4D and the flatten; V2's attention entries have the stride-2
    query path in stage 3 (0-based 2) and not in stage 4, like the network's blocks."""
    from mmef.models.efficientformer_v2 import AttnFFN
    assert [c.key for c in context_of('v1', Entry.parse('mb3df3:448'))] == \
        [Entry(3, 'mb4d', 448).key, Entry(3, 'flatten', 448).key]
    assert [c.key for c in context_of('v1', Entry.parse('stem0:48'))] == []
    for stage, strided in ((2, True), (3, False)):
        width = 96 if stage == 2 else 176
        entry = Entry(stage, 'attn', width, ratio=4)
        module, _ = build_entry('v2', entry, (224, 224))
        names = {name for name, _ in module.named_modules()}
        assert any('stride_conv' in n for n in names) == strided, (stage, sorted(names)[:20])
        block = AttnFFN(width, 4, stride=2 if strided else 1)
        assert (block.attn.stride_conv is not None) == strided


def test_archs_outside_the_space_are_refused_not_predicted():
    """Depths beyond the space, widths off the step and MLP ratios outside it have no
    prediction (a new user got 174 ms for V1 depths (3, 2, 40, 4)); widths the table's range
    lacks stay MissingEntries (their fix: a wider table)."""
    table = LatencyTable(dict(family='v1', space=SearchSpace.default('v1').to_dict()), {})
    arch = dict(widths=[48, 96, 224, 448], depths=[3, 2, 40, 4], num_attn_blocks=1)
    with pytest.raises(ValueError, match=r'stage 3 depth 40 is not in \[1, 18\].*does not '
                                         'extrapolate'):
        table.predict(arch)
    with pytest.raises(ValueError, match='stage 3 width 232 is not a multiple of 16'):
        table.predict(dict(arch, depths=[3, 2, 6, 4], widths=[48, 96, 232, 448]))
    with pytest.raises(MissingEntries):
        table.predict(dict(arch, depths=[3, 2, 6, 4]))  # inside the space, the entries missing


def test_random_archs_are_seeded_valid_and_varied():
    for family in ('v1', 'v2'):
        space = SearchSpace.default(family)
        archs = space.random_archs(30, seed=3)
        assert archs == space.random_archs(30, seed=3)
        assert archs != space.random_archs(30, seed=4)
        for arch in archs:
            assert space.violations(arch) == []
        assert len({a['num_attn_blocks'] for a in archs}) > 3
        assert len({a['widths'] for a in archs}) == 30


def test_every_arch_of_the_space_maps_to_entries_the_table_has():
    """The table's entry list (space_entries) covers every arch of the space: released, random
    and the extremes, for every set of outputs."""
    for family, cls in (('v1', EfficientFormer), ('v2', EfficientFormerV2)):
        space = SearchSpace.default(family)
        have = set(space_entries(space))
        archs = [space.arch(n) for n in cls.arch_settings] + space.random_archs(200, seed=0)
        lo = dict(widths=space.min_widths, depths=(1, 1, 1, 1), num_attn_blocks=1)
        hi = dict(widths=space.max_widths, depths=space.max_depths,
                  num_attn_blocks=space.max_depths[3] if family == 'v1' else
                  min(space.max_depths[2:]))
        if family == 'v2':
            lo['mlp_ratios'] = [[3]] * 4
            hi['mlp_ratios'] = [[4] * d for d in space.max_depths]
        archs += [space.check(lo), space.check(hi)]
        for arch in archs:
            for out_indices in ((0, 1, 2, 3), (3, ), (1, 2)):
                used = arch_entries(family, arch, out_indices)
                assert set(used) <= have, set(used) - have
                assert sum(used.values()) >= 1 + 3 + sum(arch['depths'])


def test_entry_keys_round_trip():
    for family in ('v1', 'v2'):
        for e in space_entries(SearchSpace.default(family).with_widths(max_widths=48)):
            assert Entry.parse(e.key) == e
    with pytest.raises(ValueError, match='not a latency-table entry key'):
        Entry.parse('mb4d:48')


def _network_from_entries(family, arch, size):
    """Chains the modules the table times for ``arch`` and checks that each hands the next one
    an input of the shape and layout it is built for: the entries are the network."""
    used = arch_entries(family, arch)
    order = sorted(used, key=lambda e: (e.stage, KINDS[family].index(e.kind)))
    x = None
    for e in order:
        if e.kind in ('norm', 'normt', 'out'):
            continue
        module, example = build_entry(family, e, size)
        if x is not None:
            assert x.shape == example.shape, (e.key, x.shape, example.shape)
            assert x.is_contiguous(memory_format=torch.channels_last) == \
                example.is_contiguous(memory_format=torch.channels_last), e.key
        with torch.no_grad():
            for _ in range(used[e]):
                x = module(example if x is None else x)
    return x


@pytest.mark.parametrize('size', [(72, 104), (104, 72)])
def test_entries_chain_into_the_backbone_shapes(size):
    arch = dict(widths=(32, 48, 64, 80), depths=(1, 2, 1, 2), num_attn_blocks=1)
    x = _network_from_entries('v1', arch, size)
    ref = EfficientFormer(arch).eval()(torch.rand(1, 3, *size))[-1]
    assert x.shape == (1, ref.shape[2] * ref.shape[3], 80)
    arch2 = dict(widths=(32, 48, 64, 80), depths=(1, 1, 2, 2), num_attn_blocks=1,
                 mlp_ratios=[[4], [3], [4, 3], [3, 4]])
    x = _network_from_entries('v2', arch2, size)
    assert x.shape == EfficientFormerV2(arch2).eval()(torch.rand(1, 3, *size))[-1].shape


# ---------------------------------------------------------------------------- table files
def test_table_round_trip_and_metadata(tmp_path):
    table = tiny_table(tmp_path)
    path = tmp_path / 't.json'
    assert not osp.exists(str(path) + '.partial')
    loaded = LatencyTable.load(str(path))
    assert loaded.entries == table.entries and loaded.meta == table.meta
    assert set(table.entries) == {e.key for e in space_entries(table.space)}
    m = loaded.meta
    for key in ('family', 'input_size', 'batch', 'runtime', 'runtime_version', 'threads',
                'dtype', 'cpu', 'torch_version', 'date', 'runs', 'warmup', 'device'):
        assert key in m, key
    assert m['input_size'] == list(SIZE) and m['threads'] == 1 and m['dtype'] == 'fp32'
    assert m['cpu']['model']
    for key, row in loaded.entries.items():
        assert row['min'] <= row['q1'] <= row['ms'] <= row['q3'] <= row['max'], key
        assert row['context'] == [c.key for c in context_of('v1', Entry.parse(key))]
    text = path.read_text()
    assert json.loads(text)['format'] == 1 and '\n' in text  # readable and diffable
    with pytest.raises(FileExistsError, match='--overwrite'):
        tiny_table(tmp_path)


def test_predict_is_the_sum_of_the_entries_the_arch_uses(tmp_path):
    table = tiny_table(tmp_path)
    e = table.entries
    arch = dict(widths=(16, 32, 32, 16), depths=(2, 1, 3, 4), num_attn_blocks=3)
    # independent count: stem, 3 downsamplings, 2 + 1 + 3 + 1 MB4D (the first of each stage
    # its own entry), flatten, 3 MB3D (the first its own entry), 4 norms
    expected = (e['stem0:16']['ms'] + e['down1:16>32']['ms'] + e['down2:32>32']['ms']
                + e['down3:32>16']['ms'] + e['mb4df0:16']['ms'] + e['mb4d0:16']['ms']
                + e['mb4df1:32']['ms'] + e['mb4df2:32']['ms'] + 2 * e['mb4d2:32']['ms']
                + e['mb4df3:16']['ms'] + e['flatten3:16']['ms'] + e['mb3df3:16']['ms']
                + 2 * e['mb3d3:16']['ms'] + e['norm0:16']['ms'] + e['norm1:32']['ms']
                + e['norm2:32']['ms'] + e['normt3:16']['ms'])
    assert table.predict(arch) == pytest.approx(expected, rel=1e-12)
    parts = table.breakdown(arch)
    assert parts['total'] == pytest.approx(expected, rel=1e-12)
    assert sum(parts['per_stage'].values()) == pytest.approx(expected, rel=1e-12)
    assert sum(parts['per_kind'].values()) == pytest.approx(expected, rel=1e-12)
    assert parts['per_kind']['mb3d'] == pytest.approx(2 * e['mb3d3:16']['ms'])
    assert parts['per_kind']['mb3df'] == pytest.approx(e['mb3df3:16']['ms'])
    # only stage 3 as output: no other norms, stage 3's from tokens
    only_last = expected - sum(e[k]['ms'] for k in ('norm0:16', 'norm1:32', 'norm2:32'))
    assert table.predict(arch, out_indices=(3, )) == pytest.approx(only_last, rel=1e-12)


def test_predict_refuses_missing_entries_and_mismatched_tables(tmp_path):
    table = tiny_table(tmp_path)
    with pytest.raises(MissingEntries, match=r'lacks .* entries this arch needs: down1:48>96'):
        table.predict('l1')
    with pytest.raises(ValueError, match='Unknown EfficientFormer arch'):
        table.predict('l9')
    table.check(family='v1', input_size=SIZE, runtime='torch', batch=1, device='cpu')
    with pytest.raises(TableMismatch, match=r'input_size \[40, 56\] in the table, \[800, 1344\] '
                       r'asked; runtime torch in the table, onnxruntime asked'):
        table.check(input_size=(800, 1344), runtime='onnxruntime')
    with pytest.raises(TableMismatch, match='family v1 in the table, v2 asked'):
        table.check(family='v2')
    path = str(tmp_path / 't.json')
    with pytest.raises(SystemExit, match='input_size'):
        tool.main(['predict', path, '--arch', 'l1', '--size', '512', '512'])
    with pytest.raises(SystemExit, match='lacks'):
        tool.main(['predict', path, '--arch', 'l1'])
    not_a_table = tmp_path / 'x.json'
    not_a_table.write_text('{"a": 1}')
    with pytest.raises(ValueError, match='not an mmef latency table'):
        LatencyTable.load(str(not_a_table))


def test_interrupted_build_resumes_without_retiming(tmp_path, monkeypatch):
    space = SearchSpace.default('v1').with_widths(min_widths=16, max_widths=16)
    all_keys = [e.key for e in space_entries(space)]
    timed = []
    real = table_module.time_entry

    def flaky(family, entry, *args, **kwargs):
        if len(timed) == 4:
            raise KeyboardInterrupt
        timed.append(entry.key)
        return real(family, entry, *args, **kwargs)

    monkeypatch.setattr(table_module, 'time_entry', flaky)
    out = tmp_path / 'r.json'
    n = len(all_keys)
    with pytest.raises(KeyboardInterrupt, match=rf'interrupted: the entries timed so far \(4 of '
                       rf'{2 * n} visits: {n} entries x 2 sweeps, 0 entries done\) are kept in '
                       r'.*r\.json\.partial; the same command resumes there'):
        tiny_table(tmp_path, name='r.json', space=space, busy_spread=0)
    assert not out.exists()
    with pytest.raises(ValueError, match='is an interrupted build .4 entries., not a finished'):
        LatencyTable.load(str(out) + '.partial')
    partial = LatencyTable.load(str(out) + '.partial', partial=True)
    assert sorted(partial.entries) == sorted(timed)
    first = dict(partial.entries)
    # other settings are refused, not mixed into the interrupted build
    with pytest.raises(TableMismatch, match='interrupted build with other settings.*runs'):
        build_table('v1', SIZE, str(out), threads=1, runs=3, warmup=1, space=space,
                    progress=False)
    timed.clear()
    monkeypatch.setattr(table_module, 'time_entry', lambda *a, **k: (timed.append(a[1].key),
                                                                     real(*a, **k))[1])
    # only the build loop's timings count here: on a noisy host the end-of-build outlier
    # re-timing (tested on its own) may time any entry again
    monkeypatch.setattr(table_module, 'outliers', lambda table, tolerance=0.25: [])
    # the calls are counted: no re-timing of a visit a busy host spread (tested on its own)
    table = tiny_table(tmp_path, name='r.json', space=space, busy_spread=0)
    # the first sweep's other entries, then the second sweep over all of them
    assert sorted(timed[:n - 4]) == sorted(set(all_keys) - set(first))
    assert sorted(timed[n - 4:]) == sorted(all_keys)
    assert sorted(table.entries) == sorted(all_keys)
    for k, v in first.items():  # the interrupted build's runs are kept, not timed again
        assert table.entries[k]['runs_ms'][:1] == v['runs_ms']
        assert table.entries[k]['sweeps_ms'][:1] == v['sweeps_ms']
        assert len(table.entries[k]['sweeps_ms']) == 2
    assert out.exists() and not osp.exists(str(out) + '.partial')


def test_runs_are_shared_by_sweeps_over_the_whole_table(tmp_path, monkeypatch):
    assert table_module.sweep_runs(10, 3) == [4, 3, 3]
    assert table_module.sweep_runs(2, 1) == [2]
    with pytest.raises(ValueError, match='3 sweeps cannot share 2 timed runs.*--runs / --sweeps'):
        table_module.sweep_runs(2, 3)
    space = SearchSpace.default('v1').with_widths(min_widths=16, max_widths=16)
    keys = sorted(e.key for e in space_entries(space))
    visits = []
    real = table_module.time_entry

    def record(family, entry, input_size, runtime, device, threads, batch, runs, *a, **k):
        visits.append((entry.key, runs))
        return real(family, entry, input_size, runtime, device, threads, batch, runs, *a, **k)

    monkeypatch.setattr(table_module, 'time_entry', record)
    monkeypatch.setattr(table_module, 'outliers', lambda table, tolerance=0.25: [])
    table = build_table('v1', SIZE, str(tmp_path / 's.json'), threads=1, runs=4, warmup=1,
                        space=space, progress=False, sweeps=3, busy_spread=0)  # calls counted
    n = len(keys)
    # sweep-major: every entry once (2 runs: the remainder goes first) before any a second time
    assert [r for _, r in visits] == [2] * n + [1] * n + [1] * n
    for sweep in range(3):
        assert sorted(k for k, _ in visits[sweep * n:(sweep + 1) * n]) == keys
    assert table.meta['sweeps'] == 3 and table.meta['runs'] == 4
    for key, row in table.entries.items():
        assert len(row['runs_ms']) == 4 and len(row['sweeps_ms']) == 3
        assert row['ms'] == round(statistics.median(row['runs_ms']), 4)
        assert row['sweeps_ms'][0] == pytest.approx(statistics.median(row['runs_ms'][:2]), abs=1e-4)
    drift = table.meta['drift']
    assert drift['sweeps'] == 3 and len(drift['per_stage']) == 4
    assert drift['worst'] == max(drift['per_stage']) >= 0
    with pytest.raises(ValueError, match='4 sweeps cannot share 2 timed runs'):
        build_table('v1', SIZE, str(tmp_path / 'x.json'), threads=1, runs=2, space=space,
                    progress=False, sweeps=4)
    assert not osp.exists(tmp_path / 'x.json.partial')


def test_drift_between_sweeps_is_measured_per_stage_and_warned(tmp_path):
    table = tiny_table(tmp_path)
    table.meta['sweeps'] = 2
    for key, row in table.entries.items():  # stage 3's entries 20 % slower in the first sweep
        row['sweeps_ms'] = [1.2, 1.0] if Entry.parse(key).stage == 2 else [1.0, 1.0]
    counts = [sum(Entry.parse(k).stage == s for k in table.entries) for s in range(4)]
    drift = table_module.sweep_drift(table)
    assert drift['per_stage'] == [0.0, 0.0, 0.2, 0.0] and drift['worst'] == 0.2
    assert drift['stage_sums_ms'][2] == [round(1.2 * counts[2], 3), float(counts[2])]
    table.meta['drift'] = drift
    assert any("the host's speed drifted while the table was built" in w and 'stage 3 20 %' in w
               and 'stage 1' not in w for w in table.warnings())
    # the limit (DRIFT_WARN, 10 %) itself is quiet, just beyond it is not
    table.meta['drift'] = dict(drift, per_stage=[0.0, 0.0, 0.10, 0.0], worst=0.10)
    assert not any('drifted' in w for w in table.warnings())
    table.meta['drift'] = dict(drift, per_stage=[0.0, 0.0, 0.0, 0.101], worst=0.101)
    assert any('stage 4 10 %' in w for w in table.warnings() if 'drifted' in w)
    table.meta['sweeps'] = 1
    assert table_module.sweep_drift(table) is None


# ---------------------------------------------------------------------------- runtimes, CLI
def test_onnxruntime_table_and_v2_entries(tmp_path):
    keys = ['mb4d1:32', 'mb3d3:16', 'normt3:16']
    table = tiny_table(tmp_path, runtime='onnxruntime', keys=keys)
    assert sorted(table.entries) == sorted(keys)
    assert table.meta['runtime'] == 'onnxruntime' and table.meta['runtime_version']
    v2keys = ['stem0:16', 'adown3:16>24', 'attn2:32x4', 'attn3:16x3', 'out3:16']
    v2 = tiny_table(tmp_path, family='v2', keys=v2keys, name='v2.json',
                    space=SearchSpace.default('v2').with_widths(16, 32))
    assert sorted(v2.entries) == sorted(v2keys) and v2.family == 'v2'


def test_compiled_models_leave_no_onnx_files_behind(tmp_path, monkeypatch):
    """onnxruntime and OpenVINO compile from an ONNX file written to a temporary folder, removed
    once the runtime holds the model (a table build compiles one per entry and visit); the
    compiled model still runs and equals PyTorch. A workdir given is kept."""
    import tempfile

    from mmef.runtimes import compile_module
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    module = build_entry('v1', Entry.parse('mb4d1:16'), SIZE)[0]
    x = torch.randn(1, 16, 5, 7)
    runtimes = ['onnxruntime'] + (['openvino'] if importlib.util.find_spec('openvino') else [])
    for runtime in runtimes:
        compiled = compile_module(module, x, runtime, threads=1)
        with torch.no_grad():
            ref = module(x).numpy()
        out = compiled.run(compiled.native(x))
        assert abs(out - ref).max() <= 1e-4 * abs(ref).max(), runtime
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / 'kept'
    kept.mkdir()
    compile_module(module, x, 'onnxruntime', threads=1, workdir=str(kept))
    assert (kept / 'model.onnx').is_file()


def test_unavailable_runtimes_are_refused_with_the_reason(monkeypatch, tmp_path):
    from mmef import runtimes
    monkeypatch.setattr(runtimes, 'bf16_kernels', lambda: False)
    with pytest.raises(runtimes.RuntimeUnavailable, match='no bf16 kernels.*Use the torch'):
        runtimes.check_available('torch-bf16')
    monkeypatch.setitem(sys.modules, 'openvino', None)
    with pytest.raises(SystemExit, match='pip install openvino'):
        tool.main(['build', '--family', 'v1', '--size', '40', '56', '--runtime', 'openvino',
                   '--out', str(tmp_path / 'ov.json')])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match='no CUDA device'):
            tool.main(['build', '--family', 'v1', '--size', '40', '56', '--device', 'cuda',
                       '--out', str(tmp_path / 'cuda.json')])
    with pytest.raises(runtimes.RuntimeUnavailable, match='runs on the CPU here|no CUDA'):
        runtimes.check_available('onnxruntime', 'cuda')
    with pytest.raises(ValueError, match='unknown runtime'):
        runtimes.check_available('tensorrt')


def test_cli_build_predict_study_report(tmp_path, capsys):
    path = str(tmp_path / 'cli.json')
    arch = {'widths': [16, 32, 32, 32], 'depths': [1, 1, 2, 2], 'num_attn_blocks': 1}
    # --glibc-default: in this process, the tool must not change the heap of the test session
    tool.main(['build', '--family', 'v1', '--size', *map(str, SIZE), '--threads', '1',
               '--runs', '2', '--warmup', '0', '--archs', json.dumps(arch), '--out', path,
               '--no-progress', '--glibc-default', '--calibrate', '0'])
    table = LatencyTable.load(path)
    assert set(table.entries) == {e.key for e in arch_entries('v1', table.arch(arch))}
    tool.main(['predict', path, '--arch', json.dumps(arch), '--rows', '--family', 'v1',
               '--size', *map(str, SIZE)])
    out = capsys.readouterr().out
    # the tool sums the breakdown's rows, predict() the entries: the same sum in another order,
    # so compare the printed value within its rounding, not its digits
    import re
    printed = float(re.search(r'predicted: ([0-9.]+) ms', out).group(1))
    assert printed == pytest.approx(table.predict(arch), abs=0.0051) and '| mb3df3:32 | 1 |' in out
    # a study on a table of the narrow space: one named arch and two random ones
    narrow = str(tmp_path / 'narrow.json')
    tool.main(['build', '--family', 'v1', '--size', *map(str, SIZE), '--threads', '1',
               '--runs', '2', '--warmup', '0', '--min-widths', '16', '--max-widths', '32',
               '--out', narrow, '--no-progress', '--glibc-default'])
    study = str(tmp_path / 'study.json')
    tool.main(['study', narrow, '--archs', '--random', '2', '--seed', '1', '--runs', '2',
               '--warmup', '0', '--out', study, '--glibc-default'])
    result = json.load(open(study))
    space = LatencyTable.load(narrow).space
    assert [r['arch'] for r in result['rows']] == [
        {k: list(v) if isinstance(v, tuple) else v for k, v in a.items()}
        for a in space.random_archs(2, seed=1)]
    for row in result['rows']:
        assert row['predicted_ms'] == pytest.approx(LatencyTable.load(narrow).predict(row['arch']))
        assert row['error'] == pytest.approx(row['predicted_ms'] / row['measured_ms'] - 1)
    assert result['summary']['n'] == 2 and result['meta']['threads'] == 1
    # a table of L1's blocks: the report breaks L1 down by stage and block kind
    l1 = str(tmp_path / 'l1.json')
    tool.main(['build', '--family', 'v1', '--size', *map(str, SIZE), '--threads', '1',
               '--runs', '1', '--warmup', '0', '--archs', 'l1', '--out', l1, '--no-progress',
               '--glibc-default', '--calibrate', '0'])
    out_dir = tmp_path / 'report'
    tool.main(['report', path, l1, study, '--out-dir', str(out_dir)])
    assert (out_dir / 'prediction.png').stat().st_size > 1000
    assert (out_dir / 'breakdown_v1_40x56_torch.png').stat().st_size > 1000
    text = (out_dir / 'report.md').read_text()
    assert '| v1 | 40x56 | torch' in text
    parts = LatencyTable.load(l1).breakdown('l1')
    row = next(line for line in text.splitlines() if line.startswith('| l1 |'))
    assert row.startswith(f"| l1 | {parts['total']:.1f} | ")
    assert f"{100 * parts['per_stage'][0] / parts['total']:.0f} %" in row


def test_stage_sizes_follow_the_backbone():
    for size in ((40, 56), (37, 61), (800, 1344), (512, 512)):
        outs = EfficientFormer(dict(widths=(16, 16, 16, 16), depths=(1, 1, 1, 1),
                                    num_attn_blocks=0)).eval()(torch.rand(1, 3, *size))
        assert stage_sizes(size) == [tuple(o.shape[-2:]) for o in outs]


def test_entries_hit_by_a_burst_of_load_are_retimed(tmp_path):
    """An entry far slower than its neighbours of other widths is timed twice more and the
    median of the three measurements kept (the measurements are recorded); the others stay."""
    from mmef.latency.table import outliers, retime_outliers
    space = SearchSpace.default('v1').with_widths(min_widths=16, max_widths=48)
    table = build_table('v1', SIZE, str(tmp_path / 'o.json'), threads=1, runs=3, warmup=1,
                        space=space, keys=['mb4d1:16', 'mb4d1:32', 'mb4d1:48'], progress=False)
    # blocks this small (~0.1 ms) are noisy and the build may have re-timed one already: start
    # from smooth medians (widths 16 / 32 / 48 costing 0.5 / 1 / 1.5 times the middle one)
    base = table.entries['mb4d1:32']['ms']
    for key, factor in (('mb4d1:16', 0.5), ('mb4d1:32', 1.0), ('mb4d1:48', 1.5)):
        table.entries[key].pop('retimed', None)
        table.entries[key]['ms'] = base * factor
    assert outliers(table) == []
    clean = {k: dict(v) for k, v in table.entries.items()}
    runs = clean['mb4d1:32']['runs_ms']
    table.entries['mb4d1:32'] = dict(clean['mb4d1:32'], ms=base * 50)
    assert outliers(table) == ['mb4d1:32']
    assert retime_outliers(table, runs=3, warmup=1, progress=False) == ['mb4d1:32']
    row = table.entries['mb4d1:32']
    assert len(row['retimed']) == 3 and row['retimed'][0] == base * 50
    assert len(row['runs_ms']) == len(runs) + 6 and row['runs_ms'][:len(runs)] == runs
    assert row['ms'] == round(statistics.median(row['runs_ms']), 4) < row['retimed'][0]
    assert table.entries['mb4d1:16'] == clean['mb4d1:16']
    assert 'mb4d1:32' not in outliers(table)  # re-timed entries are not flagged again


def test_heap_setting_is_recorded_and_a_table_of_another_is_refused(tmp_path):
    """The tool keeps freed memory by default (process-wide, so in a subprocess here), records
    it in the table, and a check run with another heap setting than the table's is refused."""
    import subprocess

    from tool_helpers import PYTHON, subprocess_env
    path = str(tmp_path / 'kept.json')
    cmd = [PYTHON, osp.join(ROOT, 'tools', 'latency_table.py')]
    proc = subprocess.run(cmd + ['build', '--family', 'v1', '--size', *map(str, SIZE),
                                 '--threads', '1', '--runs', '1', '--warmup', '0', '--archs',
                                 json.dumps(dict(widths=[16] * 4, depths=[1] * 4,
                                                 num_attn_blocks=1)),
                                 '--out', path, '--no-progress', '--calibrate', '0'],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert LatencyTable.load(path).meta['allocator'] == 'kept (mmef.runtimes.keep_freed_memory)'
    proc = subprocess.run(cmd + ['study', path, '--archs', '--random', '1', '--runs', '1',
                                 '--glibc-default'],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 1
    assert "allocator kept (mmef.runtimes.keep_freed_memory) in the table, glibc default asked" \
        in proc.stderr, proc.stderr


@pytest.mark.parametrize('runtime', ['openvino', 'openvino-int8'])
def test_openvino_table(tmp_path, runtime):
    """OpenVINO tables (f32 and INT8: entries quantized by mmef.runtimes.quantize_openvino,
    checked against PyTorch within RUNTIME_TOL['int8'] before they are timed)."""
    pytest.importorskip('openvino', reason='OpenVINO is installed by scripts/setup.sh')
    table = tiny_table(tmp_path, runtime=runtime, keys=['stem0:16', 'mb3df3:16'], sweeps=1)
    assert table.meta['runtime'] == runtime and table.meta['allocator'] == f'{runtime} arena'
    assert table.meta['dtype'] == ('int8' if runtime.endswith('int8') else 'fp32')
    assert sorted(table.entries) == ['mb3df3:16', 'stem0:16']
    # timed in-graph, each run a difference of two models' times: a tiny entry's difference can
    # come out at or below zero on a busy host (docs/latency.md), so no sign is asserted
    assert table.meta['method'] == table_module.METHODS['in-graph']
    for entry in table.entries.values():
        assert len(entry['runs_ms']) == 2 and all(math.isfinite(t) for t in entry['runs_ms'])


def test_paired_study_predicts_from_each_rounds_entries(tmp_path):
    """--paired: every entry an arch uses is timed again before each round of whole runs, and
    each round's prediction is the sum of that round's entries (recomputed here from the
    recorded entry times and the arch's entry counts); the table's own prediction is kept."""
    from mmef.latency.measure import prediction_study
    arch = {'widths': [16, 32, 32, 32], 'depths': [1, 2, 1, 2], 'num_attn_blocks': 1}
    used = arch_entries('v1', SearchSpace.default('v1').arch(arch))
    table = tiny_table(tmp_path, keys=[e.key for e in used])
    result = prediction_study(table, {'a': arch}, runs=3,
                              warmup=1, paired=True, entry_runs=1)
    assert result['paired'] and result['entry_runs'] == 1
    assert set(result['entry_ms']) == {e.key for e in used}
    assert all(len(v) == 3 for v in result['entry_ms'].values())
    rounds = [sum(result['entry_ms'][e.key][r] * n for e, n in used.items()) for r in range(3)]
    row, = result['rows']
    assert row['predicted_ms'] == pytest.approx(statistics.median(rounds))
    assert row['predicted_min_ms'] == pytest.approx(min(rounds))
    assert row['table_ms'] == pytest.approx(table.predict(arch))
    assert row['error'] == pytest.approx(row['predicted_ms'] / row['measured_ms'] - 1)


def test_count_work_and_floor(capsys):
    """The floor's counts, against flops worked out by hand for a small module, and the
    `floor` subcommand on a real deployed backbone."""
    import torch.nn as nn
    from mmef.latency.measure import arithmetic_floor, count_work

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.dw(nn.functional.gelu(self.conv(x)))  # (2, 8, 5, 6)
            t = x.flatten(2).transpose(1, 2)  # (2, 30, 8)
            a = torch.softmax(t @ t.transpose(1, 2), -1)  # (2, 30, 30)
            return self.fc(torch.bmm(a, t))

    counts = count_work(Small().eval(), torch.randn(2, 3, 5, 6))
    pixels = 2 * 5 * 6
    assert counts['conv'] == 2 * pixels * 8 * 3 * 9
    assert counts['depthwise'] == 2 * pixels * 8 * 9
    assert counts['gelu'] == pixels * 8
    assert counts['softmax'] == 2 * 30 * 30
    assert counts['gemm'] == 2 * (2 * 30 * 30 * 8) * 2 + 2 * (2 * 30 * 4 * 8)
    total, parts = arithmetic_floor(counts, dict(gemm=1e9, gelu=1e8, softmax=1e8))
    assert parts['gemm_conv'] == pytest.approx((counts['gemm'] + counts['conv']) / 1e9)
    assert total == pytest.approx(sum(parts.values()))
    tool.main(['floor', '--models', 'l1', 'v2s0', '--size', '64', '96', '--threads', '1'])
    out = capsys.readouterr().out
    assert '| l1 | 64x96 |' in out and '| v2s0 | 64x96 |' in out and 'GFLOP/s' in out


def test_cli_bad_archs_are_one_line_errors(tmp_path):
    """A malformed JSON arch, a V2 arch without mlp_ratios and a V1 arch outside the space: the
    tool exits with one line naming the problem, no traceback."""
    path = str(tmp_path / 't.json')
    LatencyTable(dict(family='v2', space=SearchSpace.default('v2').to_dict(), finished='-'),
                 {}).save(path)
    with pytest.raises(SystemExit, match='is not valid JSON'):
        tool.main(['predict', path, '--arch', '{"widths": [32'])
    with pytest.raises(SystemExit, match=r"missing keys: \['mlp_ratios'\]"):
        tool.main(['predict', path, '--arch', json.dumps(dict(
            widths=[32, 48, 96, 176], depths=[2, 2, 6, 4], num_attn_blocks=2))])
