"""What keeps a latency table honest (issue 26): a busy machine noticed instead of averaged, a
table that checks itself at the end of its build and says so when used, tables from another
host named, broken table files refused in one line, interrupted builds that say how to resume,
and the paper's four observations (``observe``) built as controlled pairs. Tiny sizes and few
runs; timings are faked only where the point is what the tools do with them."""
import json
import os.path as osp
import statistics
import sys

import pytest
import torch

from mmef import runtimes
from mmef.latency import LatencyTable, SearchSpace, TableMismatch, build_table, space_entries
from mmef.latency import measure
from mmef.latency import table as table_module
from mmef.runtimes import BusyMachine, busy, spread
from tool_helpers import ROOT

sys.path.insert(0, osp.join(ROOT, 'tools'))
import latency_table as tool  # noqa: E402

SIZE = (40, 56)
SPACE = SearchSpace.default('v1').with_widths(min_widths=16, max_widths=16)


def _build(tmp_path, name='t.json', **kwargs):
    return build_table('v1', SIZE, str(tmp_path / name), threads=1, runs=4, warmup=1,
                       space=SPACE, progress=False, **kwargs)


# ------------------------------------------------------------------------------ busy machine
def test_spread_and_busy_on_fixed_runs():
    quiet = [10.0, 10.2, 10.1, 9.9, 10.3, 10.0]
    loaded = [0.75, 0.8, 59.0, 0.77, 30.0, 0.76, 45.0, 0.8]  # the entry under load
    assert spread(quiet) == pytest.approx(10.175 / 10.0)  # inclusive quartiles
    assert spread([5.0]) == 1.0
    flagged = busy({'quiet': quiet, 'loaded': loaded})
    assert list(flagged) == ['loaded']
    q1, q3 = flagged['loaded']
    assert q3 / q1 > 2 and q1 == pytest.approx(0.7675)
    assert busy({'loaded': loaded}, limit=0) == {}  # 0 checks nothing
    assert busy({'x': [1.0, 1.0, 2.5, 2.5]}, limit=3) == {}


def test_a_build_on_a_busy_machine_retimes_then_stops_keeping_what_it_timed(tmp_path,
                                                                          monkeypatch):
    real = table_module.time_entry
    calls = []
    keys = [e.key for e in sorted(space_entries(SPACE))]  # the order of the build

    def loaded_after_three(family, entry, *args, **kwargs):
        calls.append(entry.key)
        times = real(family, entry, *args, **kwargs)
        if len(set(calls)) > 3:  # from the fourth entry on, every run alternates 1x / 10x
            times = [t * (10 if i % 2 else 1) for i, t in enumerate(times)]
        return times

    monkeypatch.setattr(table_module, 'time_entry', loaded_after_three)
    with pytest.raises(BusyMachine, match=r'the machine is busy: the runs of entry .* \(3 times\) '
                       r'spread beyond 2x.*The entries timed so far \(3 of 60 visits: 20 '
                       r'entries x 3 sweeps, 0 entries done\) are kept in .*t\.json\.partial: '
                       r'the same command resumes there'):
        _build(tmp_path)
    assert calls[3:] == [keys[3]] * 3  # timed once and re-timed twice, then stopped
    partial = LatencyTable.load(str(tmp_path / 't.json.partial'), partial=True)
    assert sorted(partial.entries) == sorted(keys[:3])
    # the tool says it in one line
    monkeypatch.setattr(table_module, 'time_entry', loaded_after_three)
    calls.clear()
    with pytest.raises(SystemExit, match='error: the machine is busy'):
        tool.main(['build', '--family', 'v1', '--size', '40', '56', '--threads', '1', '--runs',
                   '4', '--min-widths', '16', '--max-widths', '16', '--out',
                   str(tmp_path / 'u.json'), '--no-progress', '--check-random', '0',
                   '--calibrate', '0'])


def test_whole_network_timings_on_a_busy_machine_are_timed_again_then_refused(monkeypatch):
    rounds = []

    def clock_factory(device='cpu'):
        def clock(fn, *args):
            out = fn(*args)
            rounds.append(1)
            return (0.1 if len(rounds) % 2 else 0.001), out  # alternate 100 ms / 1 ms
        return clock

    monkeypatch.setattr(runtimes, 'timer', clock_factory)
    models = {'l1': ('v1', 'l1')}
    with pytest.raises(BusyMachine, match=r'runs of l1 spread beyond 2x.*1.00 .. 100.00 ms'):
        measure.measure_models(models, (64, 64), runs=4, warmup=1)
    assert len(rounds) == 2 * (4 + 1)  # one attempt and one more
    rounds.clear()
    times = measure.measure_models(models, (64, 64), runs=4, warmup=1, busy_spread=0)
    assert sorted(times['l1']) == [1.0, 1.0, 100.0, 100.0]


def test_demo_budget_far_from_the_table_is_refused_on_its_host_explained_on_another():
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import demo
    assert demo.slim_budget(110.0, 100.0, foreign=False) == 110.0
    assert demo.slim_budget(110.0, 100.0, foreign=True) == 110.0
    with pytest.raises(SystemExit, match=r'L1 measured 1075.0 ms here, 6.89x what the table '
                       r'predicts for it \(156.0 ms\) on this same host: the machine is busy'):
        demo.slim_budget(1075.0, 156.0, foreign=False)
    assert demo.slim_budget(1075.0, 156.0, foreign=True) == 156.0  # in the table's units


# ------------------------------------------------------------------------------ self-check
def test_a_build_checks_itself_and_the_check_is_stored_and_reported(tmp_path, capsys):
    table = _build(tmp_path, check=dict(archs=[dict(widths=(16, 16, 16, 16),
                                                    depths=(1, 1, 2, 1), num_attn_blocks=1),
                                               dict(widths=(16, 16, 16, 16),
                                                    depths=(2, 1, 1, 2), num_attn_blocks=0)],
                                        random=0, runs=3, warmup=1))
    check = LatencyTable.load(str(tmp_path / 't.json')).meta['check']
    assert check == table.meta['check']
    assert [r['label'] for r in check['rows']] == ['w16-16-16-16_d1-1-2-1_a1',
                                                   'w16-16-16-16_d2-1-1-2_a0']
    for r in check['rows']:
        assert r['predicted_ms'] == pytest.approx(table.predict(r['arch']))
        assert r['error'] == pytest.approx(r['predicted_ms'] / r['measured_ms'] - 1)
    errors = sorted(abs(r['error']) for r in check['rows'])
    assert check['summary']['worst_abs_error'] == pytest.approx(errors[-1])
    assert check['misses'] == measure.misses(check['summary'])


def test_misses_and_warnings_name_what_is_wrong(tmp_path):
    s = dict(n=5, median_abs_error=0.049, worst_abs_error=0.10, spearman=0.95)
    assert measure.misses(s) == []  # at the targets exactly: met
    s = dict(n=5, median_abs_error=0.072, worst_abs_error=0.151, spearman=0.9)
    assert measure.misses(s) == ['median |error| 7.2 % > 5 %', 'worst |error| 15.1 % > 10 %',
                                 'Spearman 0.900 < 0.95']
    assert measure.misses(dict(n=2, median_abs_error=0, worst_abs_error=0,
                               spearman=float('nan'))) == []  # ranks of 2 archs say nothing
    table = _build(tmp_path, sweeps=1)  # no drift between sweeps to warn of (tested apart)
    assert table.warnings() == ['the table has no check of its own (whole backbones timed at '
                                'the end of the build); add one: tools/latency_table.py check '
                                'TABLE']
    table.meta['check'] = dict(date='d', summary=s, misses=measure.misses(s))
    table.meta['cpu'] = dict(model='Some Other CPU', flags=['avx2'])
    w = table.warnings()
    assert w[0].startswith('the table was built on another host (Some Other CPU, avx2); this '
                           f"is {runtimes.cpu_info()['model']}")
    assert "own check (5 whole backbones, d) missed the targets (median |error| 7.2 % > 5 %" \
        in w[1]


def test_predict_and_check_commands_report_the_tables_check(tmp_path, capsys):
    path = str(tmp_path / 't.json')
    _build(tmp_path)
    arch = '{"widths": [16, 16, 16, 16], "depths": [1, 1, 1, 1], "num_attn_blocks": 1}'
    tool.main(['predict', path, '--arch', arch])
    assert 'warning: the table has no check of its own' in capsys.readouterr().err
    # the check times in the process state the table was built in (heap, denormals), which
    # is whatever the tests before this one left; the tool's defaults are kept memory and
    # flushed denormals
    meta = LatencyTable.load(path).meta
    state = (['--glibc-default'] if meta['allocator'] != 'kept' else []) + (
        ['--keep-denormals'] if meta['denormals'] == 'kept' else [])
    tool.main(['check', path, '--archs', '--random', '2', '--runs', '2', '--warmup', '1',
               '--no-progress'] + state)
    out = capsys.readouterr().out
    check = LatencyTable.load(path).meta['check']
    assert len(check['rows']) == 2 and f"{check['summary']['n']} archs: median |error|" in out
    tool.main(['predict', path, '--arch', arch])
    err = capsys.readouterr().err
    assert ('missed the targets' in err) == bool(check['misses'])
    assert 'no check of its own' not in err


# ------------------------------------------------------------------------------ table files
@pytest.mark.parametrize('content, message', [
    (None, 'does not exist; build one'),
    ('', 'not a readable latency table .empty or truncated JSON'),
    ('{"format": 1, "meta": {"fam', 'not a readable latency table .empty or truncated JSON'),
    ('{"kind": "study", "rows": []}', 'is a study file of tools/latency_table.py study, not a '
     'latency table'),
    ('[1, 2]', 'is not an mmef latency table'),
])
def test_broken_table_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / 'x.json'
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        LatencyTable.load(str(path))
    with pytest.raises(SystemExit, match='error: .*' + message):
        tool.main(['predict', str(path), '--arch', 'l1'])


def test_resume_says_so_and_refuses_other_archs(tmp_path, monkeypatch, capsys):
    real = table_module.time_entry
    n = []

    def stop_after_two(*args, **kwargs):
        if len(n) == 2:
            raise KeyboardInterrupt
        n.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(table_module, 'time_entry', stop_after_two)
    out = str(tmp_path / 'r.json')
    base = ['build', '--family', 'v1', '--size', '40', '56', '--threads', '1', '--runs', '2',
            '--min-widths', '16', '--max-widths', '32', '--out', out, '--check-random', '0',
            '--calibrate', '0', '--busy-spread', '0',  # no re-timing: time_entry calls counted
            '--archs']
    l1ish = '{"widths": [16, 32, 16, 32], "depths": [1, 1, 1, 1], "num_attn_blocks": 1}'
    other = '{"widths": [32, 16, 16, 16], "depths": [1, 1, 1, 1], "num_attn_blocks": 0}'
    with pytest.raises(SystemExit) as e:
        tool.main(base + [l1ish])
    assert e.value.code == 130
    assert 'interrupted: the entries timed so far (2 of' in capsys.readouterr().err
    monkeypatch.setattr(table_module, 'time_entry', real)
    with pytest.raises(SystemExit, match=r'holds an interrupted build of other entries \(another '
                       r'--archs / --random / --seed: \d+ entries there, \d+ entries asked\)'):
        tool.main(base + [other])
    tool.main(base + [l1ish, '--no-progress'])
    assert 'resuming the interrupted build in' in capsys.readouterr().err
    assert LatencyTable.load(out).meta['check']['rows'][0]['label'] == 'w16-32-16-32_d1-1-1-1_a1'


# ------------------------------------------------------------------------------ observations
def test_observation_groups_are_controlled_pairs():
    """Each group's modules give what the comparison needs: the stem and the patch embedding of
    each pair the same output shape, the reshaped blocks the shape of the 4D blocks, the norm +
    projection variants the same number of outputs, and every MLP the same shape; MHSA and
    the pool mixer the same width and tokens."""
    from mmef.latency.observe import OBSERVATIONS, cases
    groups = cases((96, 160))
    assert [o['key'] for o in OBSERVATIONS] == list(groups)
    with torch.no_grad():
        shapes = {key: [tuple(m.eval()(x).shape) for _, m, x in group]
                  for key, group in groups.items()}
    assert shapes['stem'] == [(1, 48, 24, 40)] * 2 + [(1, 448, 6, 10)] * 2
    assert shapes['reshape'] == [(1, 224, 6, 10)] * 2
    assert shapes['mixer'] == [(1, 448, 3, 5), (1, 15, 448), (1, 224, 6, 10), (1, 60, 224)]
    numel = [torch.Size(s).numel() for s in shapes['norm']]
    assert numel == [1 * 192 * 24 * 40] * 3 + [1 * 896 * 6 * 10] * 3
    assert shapes['act'] == [(1, 48, 24, 40)] * 4
    # the reshaped variant computes what its parts compute (no lost block)
    _, blocks, x = groups['reshape'][1]
    assert not torch.allclose(blocks(x), x)


def test_observation_verdicts_follow_their_rules():
    from mmef.latency.observe import _verdict
    assert _verdict('stem', {'s4': 1.0, 'p4': 1.0, 's16': 2.0, 'p16': 1.95})  # within 5 %
    assert not _verdict('stem', {'s4': 2.0, 'p4': 1.0, 's16': 1.0, 'p16': 3.0})
    assert _verdict('reshape', {'4d': 1.0, 'reshaped': 1.1})
    assert not _verdict('reshape', {'4d': 1.0, 'reshaped': 1.04})
    assert _verdict('mixer', {'p': 1.0, 'a': 2.0, 'p3': 1.0, 'a3': 5.0})
    assert not _verdict('mixer', {'p': 1.0, 'a': 2.0, 'p3': 6.0, 'a3': 5.0})
    assert _verdict('norm', {'c': 1.0, 'ln': 1.2, 'gn': 1.3, 'c2': 2.0, 'ln2': 2.0, 'gn2': 3.0})
    assert not _verdict('norm', {'c': 1.0, 'ln': 1.2, 'gn': 0.9})
    assert _verdict('act', {'relu': 1.0, 'gelu': 1.04, 'hs': 1.0, 'silu': 1.0})
    assert not _verdict('act', {'relu': 1.0, 'gelu': 1.2, 'hs': 1.0, 'silu': 1.0})


def test_observe_command_and_report(tmp_path, capsys):
    out = str(tmp_path / 'observe.json')
    tool.main(['observe', '--size', '64', '96', '--runtime', 'onnxruntime', '--threads', '1',
               '--runs', '2', '--warmup', '1', '--only', 'stem', 'act', '--out', out,
               '--no-progress', '--busy-spread', '0'])
    text = capsys.readouterr().out
    data = json.load(open(out))
    assert [o['key'] for o in data['observations']] == ['stem', 'act']
    assert data['meta']['runtime'] == 'onnxruntime'
    for obs in data['observations']:
        assert obs['rows'][0]['ratio'] == 1.0
        # the rule is printed as the rule, not as the reason of a verdict
        assert (f"holds here: {'yes' if obs['holds'] else 'NO'} (the rule: it holds where "
                f"{obs['rule']})") in text
    tool.main(['report', out, '--out-dir', str(tmp_path / 'r')])
    md = open(tmp_path / 'r' / 'report.md').read()
    assert "The paper's four latency observations" in md
    assert osp.exists(tmp_path / 'r' / 'observe_onnxruntime_64x96.png')


# ------------------------------------------------------------------------------ correction
def test_the_correction_fit_recovers_a_known_correction_and_refuses_a_bad_one(tmp_path):
    """Whole-backbone times made from a known correction of the table's own sums are fitted
    back to it (ridge 0), predict() then applies it; times no correction of this form explains
    are refused (plain sums kept)."""
    import random

    from mmef.latency.measure import calibration_archs, fit_correction
    from mmef.latency.table import stage_sums
    space = SearchSpace.default('v1').with_widths(min_widths=16, max_widths=32)
    table = build_table('v1', SIZE, str(tmp_path / 'c.json'), threads=1, runs=1, warmup=0,
                        space=space, progress=False)
    archs = {f'a{i}': a for i, a in enumerate(calibration_archs(space, 10, seed=5))}
    ms = {k: v['ms'] for k, v in table.entries.items()}
    true = dict(stage_scale=[0.9, 1.1, 1.2, 0.95], attention_extra=0.15,
                per_entry_ms=0.1 * statistics.median(ms.values()))

    def corrected(arch):
        sums, attention, n = stage_sums(table.used(arch), ms)
        return (sum(a * t for a, t in zip(true['stage_scale'], sums))
                + true['attention_extra'] * attention + true['per_entry_ms'] * n)

    measured = {label: corrected(a) for label, a in archs.items()}
    fit = fit_correction(table, archs, measured, ridge=0)
    assert fit['stage_scale'] == pytest.approx(true['stage_scale'], abs=1e-3)
    assert fit['attention_extra'] == pytest.approx(true['attention_extra'], abs=1e-3)
    assert fit['per_entry_ms'] == pytest.approx(true['per_entry_ms'], rel=1e-2)
    assert fit['fit']['worst_abs_error'] < 1e-6 < fit['fit']['plain_median_abs_error']
    table.meta['correction'] = fit
    arch = dict(widths=(32, 16, 32, 16), depths=(2, 3, 1, 2), num_attn_blocks=2)
    assert table.predict(arch) == pytest.approx(corrected(arch), rel=1e-4)
    assert table.predict(arch, raw=True) == pytest.approx(sum(stage_sums(table.used(arch),
                                                                         ms)[0]))
    rng = random.Random(0)  # times unrelated to the entries: no sound fit
    assert fit_correction(table, archs, {k: rng.uniform(0.1, 100) for k in archs}) is None
    assert fit_correction(table, dict(list(archs.items())[:7]), measured) is None  # too few


def test_calibration_and_check_archs_are_timed_in_one_measurement(tmp_path, monkeypatch):
    """A build's calibration and check time their archs together (one round-robin, the check
    archs spread among the others): a host whose speed drifts between two measurements would
    otherwise put its drift into the check. The correction is fitted on the calibration archs'
    runs of that measurement and the check reads the others' runs of it."""
    from mmef.latency.measure import calibrate_and_check, calibration_archs
    from mmef.latency.table import stage_sums
    space = SearchSpace.default('v1').with_widths(min_widths=16, max_widths=32)
    table = build_table('v1', SIZE, str(tmp_path / 'c.json'), threads=1, runs=1, warmup=0,
                        space=space, progress=False)
    ms = {k: v['ms'] for k, v in table.entries.items()}
    scales = [0.8, 1.3, 1.1, 0.9]
    calls = []

    def fake(models, input_size, runtime, device, threads, batch, runs, warmup, progress=None,
             before_round=None, busy_spread=None, retries=1):
        calls.append((list(models), runs, warmup))
        return {label: [sum(a * t for a, t in zip(scales, stage_sums(table.used(arch), ms)[0]))
                        ] * runs for label, (family, arch) in models.items()}

    monkeypatch.setattr(measure, 'measure_models', fake)
    fitted = {}
    real_fit = measure.fit_correction

    def fit_spy(table, archs, measured, *args, **kwargs):
        fitted.update(measured)
        return real_fit(table, archs, measured, *args, **kwargs)

    monkeypatch.setattr(measure, 'fit_correction', fit_spy)
    cal = calibration_archs(space, 9, seed=5)
    check = [dict(widths=(32, 16, 32, 16), depths=(2, 3, 1, 2), num_attn_blocks=2), cal[0],
             dict(widths=(16, 32, 16, 32), depths=(1, 1, 3, 3), num_attn_blocks=1)]
    fitted_on = calibrate_and_check(table, dict(archs=cal, random=0, runs=2, warmup=1),
                                    dict(archs=check, random=0, runs=4, warmup=0),
                                    busy_spread=0)
    assert len(calls) == 1  # one measurement, with the larger runs and warm-up of the two
    labels, runs, warmup = calls[0]
    assert (runs, warmup) == (4, 1) and len(labels) == 11 == len(set(labels))
    checked = [measure.arch_label(a) for a in (check[0], check[2])]  # cal[0] was fitted on
    assert fitted_on == [measure.arch_label(a) for a in cal]
    assert [labels.index(label) for label in checked] == [1, 3]  # among the calibration archs

    def fake_ms(arch):
        return fake({0: ('v1', arch)}, SIZE, 'torch', 'cpu', 1, 1, 1, 0)[0][0]
    calls.clear()
    # the correction is fitted on the calibration archs' runs (whether the fit is sound or not
    # depends on the entries this build timed)
    assert fitted == {measure.arch_label(a): pytest.approx(fake_ms(a)) for a in cal}
    record = table.meta['check']  # and checked on the others'
    assert record['with_calibration'] and record['runs'] == 4
    assert [r['label'] for r in record['rows']] == checked
    assert [r['measured_ms'] for r in record['rows']] == pytest.approx(
        [fake_ms(check[0]), fake_ms(check[2])])
    assert record['rows'][0]['predicted_ms'] == pytest.approx(table.predict(check[0]))


def test_calibration_archs_spread_over_the_share_of_attention_and_over_size():
    """Half over the share of attention, half over size from below the smallest released
    variant to near the largest (V1 L7, V2 L: uniform random archs stay far below them)."""
    from mmef.latency.measure import calibration_archs, work
    for family, small, large in (('v1', 'l1', 'l7'), ('v2', 's0', 'l')):
        space = SearchSpace.default(family)
        archs = calibration_archs(space, 12, seed=2000)
        assert len(archs) == 12 and archs == calibration_archs(space, 12, seed=2000)
        shares = [a['num_attn_blocks'] / sum(a['depths']) for a in archs[:6]]
        assert shares == sorted(shares) and shares[-1] - shares[0] > 0.2
        sizes = [work(a) for a in archs[6:]]
        assert sizes == sorted(sizes) and len({str(a) for a in archs}) == 12
        assert sizes[0] <= work(space.arch(small)) and sizes[-1] >= 0.75 * work(space.arch(large))
        assert all(space.violations(a) == [] for a in archs)
    # the V1 proxy by hand: L1 = 3 x 48^2 + 2 x 96^2 / 4 + 6 x 224^2 / 16 + 4 x 448^2 / 64
    assert work(SearchSpace.default('v1').arch('l1')) == 3 * 48 ** 2 + 2 * 96 ** 2 / 4 + \
        6 * 224 ** 2 / 16 + 4 * 448 ** 2 / 64


def test_benchmark_on_a_busy_machine_times_again_then_stops(monkeypatch, capsys):
    import benchmark
    rounds = []

    def clock_factory(device='cpu'):
        def clock(fn, *args):
            out = fn(*args)
            rounds.append(1)
            return (0.1 if len(rounds) % 2 else 0.001), out
        return clock

    monkeypatch.setattr(runtimes, 'timer', clock_factory)
    args = benchmark.parse_args(['backbone', '--models', 'r18', '--size', '64', '96', '--runs',
                                 '4', '--warmup', '1', '--threads', '1'])
    with pytest.raises(BusyMachine, match=r'runs of r18 spread beyond 2x.*1.00 .. 100.00 ms'):
        benchmark.benchmark(args)
    assert len(rounds) == 2 * 4 and 'r18: quartiles' in capsys.readouterr().err
    rounds.clear()
    args.busy_spread = 0
    assert sorted(benchmark.benchmark(args)['r18']) == [0.001, 0.001, 0.1, 0.1]  # seconds


def test_benchmark_whole_detector_in_bf16_autocast_is_refused_with_the_reason():
    """mmdet's detectors fail inside mmcv's NMS under CPU bf16 autocast: the whole-model
    benchmark refuses NAME:autocast-bf16 for them (segmentors run it) before building."""
    import benchmark
    with pytest.raises(SystemExit, match="mmcv's NMS takes float32 only"):
        benchmark.make_runner('detector', 'l1-deploy:autocast-bf16', (64, 96), 1,
                              torch.device('cpu'), False)
