"""OpenVINO entries timed inside one compiled graph (issue 26): the two models an entry is timed
with (its context and it, its context alone) compute what the network computes there, the
entry's time is the per-round difference of their runs, each entry compiles its own context,
and the busy-machine check looks at the two models' runs, not at the differences.
Tiny sizes and few runs; timings are faked only where the point is what the build does with
them."""
import pytest
import torch

from mmef.latency import Entry, SearchSpace, build_table
from mmef.latency import table as table_module
from mmef.latency.blocks import Sink, build_entry, context_of, in_graph_models
from mmef.latency.table import METHODS, EntryTimer, in_graph
from mmef.runtimes import BusyMachine

SIZE = (40, 56)
SPACE = SearchSpace.default('v1').with_widths(min_widths=16, max_widths=16)


def _sink(x):
    return x.mean((2, 3)) if x.dim() == 4 else x.mean(1)


@pytest.mark.parametrize('family,key', [('v1', 'mb4d1:32'), ('v1', 'down2:16>32'),
                                        ('v1', 'mb3df3:16'), ('v1', 'norm1:32'),
                                        ('v1', 'normt3:16'), ('v2', 'ffn1:32x4'),
                                        ('v2', 'out2:32'), ('v2', 'attn3:32x3')])
def test_in_graph_models_compute_the_context_then_the_entry(family, key):
    """Against the entry and context modules built on their own (same seeds) and chained by
    hand: with_entry = sink(entry(context(x))), or (sink(context(x)), entry(context(x))) for
    an output; context_only = sink(context(x))."""
    entry = Entry.parse(key)
    with_entry, context_only, example = in_graph_models(family, entry, SIZE)
    context = [build_entry(family, e, SIZE, seed=1) for e in context_of(family, entry)]
    module = build_entry(family, entry, SIZE)[0]
    with torch.no_grad():
        y = example
        for m, _ in context:
            y = m(y)
        out = module(y)
        got = with_entry(example)
        if entry.kind in ('norm', 'normt', 'out'):
            assert isinstance(got, tuple) and len(got) == 2
            torch.testing.assert_close(got[0], _sink(y))
            torch.testing.assert_close(got[1], out)
        else:
            torch.testing.assert_close(got, _sink(out))
        torch.testing.assert_close(context_only(example), _sink(y))


def test_the_stem_keeps_the_image_boundary():
    with_entry, context_only, example = in_graph_models('v1', Entry.parse('stem0:16'), SIZE)
    assert context_only is None and example.shape == (1, 3, *SIZE)
    stem = build_entry('v1', Entry.parse('stem0:16'), SIZE)[0]
    with torch.no_grad():
        torch.testing.assert_close(with_entry(example), Sink()(stem(example)))


def test_only_openvino_is_timed_in_graph():
    assert [r for r in ('torch', 'torch-bf16', 'onnxruntime', 'openvino', 'openvino-bf16',
                        'openvino-int8') if in_graph(r)] == ['openvino', 'openvino-bf16',
                                                             'openvino-int8']


def test_openvino_entry_time_is_the_per_round_difference_of_its_own_models():
    pytest.importorskip('openvino', reason='OpenVINO is installed by scripts/setup.sh')
    contexts = {}
    timer = EntryTimer('v1', Entry.parse('mb4d1:32'), SIZE, 'openvino', 'cpu', 1, 1, contexts)
    times = timer.time(3, warmup=1)
    full = timer.samples['mb4d1:32 with its context']
    base = timer.samples['the context of mb4d1:32']
    assert len(full) == len(base) == 3
    assert times == [f - b for f, b in zip(full, base)]
    # each timer compiles its own context: a process holding many OpenVINO models runs them
    # slower, so nothing is kept for other entries
    norm = EntryTimer('v1', Entry.parse('norm1:32'), SIZE, 'openvino', 'cpu', 1, 1, contexts)
    assert contexts == {} and norm.models[1] is not timer.models[1]
    stem = EntryTimer('v1', Entry.parse('stem0:16'), SIZE, 'openvino', 'cpu', 1, 1, contexts)
    times = stem.time(2)
    assert times == stem.samples['stem0:16 with its context'] and len(stem.models) == 1


def test_a_torch_table_records_the_chained_method(tmp_path):
    torch_table = build_table('v1', SIZE, str(tmp_path / 't.json'), threads=1, runs=2,
                              warmup=1, space=SPACE, keys=['mb4d1:16'], progress=False)
    assert torch_table.meta['method'] == METHODS['chained']


def _fake_time_entry(times, samples_runs):
    def fake(family, entry, *args, **kwargs):
        samples = args[-1]
        samples.update({f'{entry.key} with its context': list(samples_runs),
                        f'the context of {entry.key}': [1.0] * len(samples_runs)})
        return list(times)
    return fake


def test_the_busy_check_looks_at_the_two_models_runs(tmp_path, monkeypatch):
    """Differences of a cheap entry spread widely on a quiet machine (0.01 .. 0.2 ms): not
    busy; the same differences from models whose runs spread 10x: busy."""
    wild_differences = [0.01, 0.2, 0.05, 0.15]
    monkeypatch.setattr(table_module, 'time_entry',
                        _fake_time_entry(wild_differences, [2.0, 2.1, 2.05, 2.02]))
    table = build_table('v1', SIZE, str(tmp_path / 'q.json'), threads=1, runs=4, warmup=1,
                        space=SPACE, keys=['mb4d1:16'], progress=False, sweeps=1)
    assert table.entries['mb4d1:16']['runs_ms'] == wild_differences
    monkeypatch.setattr(table_module, 'time_entry',
                        _fake_time_entry([1.0, 1.01, 0.99, 1.0], [2.0, 20.0, 2.0, 20.0]))
    with pytest.raises(BusyMachine, match='mb4d1:16 with its context'):
        build_table('v1', SIZE, str(tmp_path / 'b.json'), threads=1, runs=4, warmup=1,
                    space=SPACE, keys=['mb4d1:16'], progress=False, sweeps=1)


def test_a_study_of_an_in_graph_table_compares_medians_only(tmp_path, capsys, monkeypatch):
    """An OpenVINO table records the in-graph method; the fastest runs of differences are no
    least-disturbed estimate: a study of it compares medians and says why it leaves the fastest
    runs out."""
    pytest.importorskip('openvino', reason='OpenVINO is installed by scripts/setup.sh')
    import os.path as osp
    import sys

    from mmef.latency import arch_entries
    from mmef.latency.measure import prediction_study
    from tool_helpers import ROOT
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import latency_table as tool
    arch = {'widths': [16, 16, 16, 16], 'depths': [1, 1, 1, 1], 'num_attn_blocks': 1}
    keys = [e.key for e in arch_entries('v1', SearchSpace.default('v1').arch(arch))]
    path = str(tmp_path / 'o.json')
    table = build_table('v1', SIZE, path, 'openvino', threads=1, runs=2, warmup=1, space=SPACE,
                        sweeps=1,
                        keys=keys, progress=False)
    assert table.meta['method'] == METHODS['in-graph']
    result = prediction_study(table, {'a': arch}, runs=2, warmup=1, busy_spread=0)
    assert result['summary']['minima'] is None
    assert result['rows'][0]['predicted_min_ms'] is None
    assert result['rows'][0]['predicted_ms'] == pytest.approx(table.predict(arch))
    # the tool's "random" arch is the one the table was built for (its entries are all there)
    monkeypatch.setattr(SearchSpace, 'random_archs', lambda self, n, seed: [arch])
    tool.main(['study', path, '--archs', '--random', '1', '--runs', '2', '--warmup', '1',
               '--keep-denormals', '--busy-spread', '0'])
    assert 'fastest runs not compared: the entries were timed in-graph' in capsys.readouterr().out


def test_openvino_whole_models_are_timed_one_at_a_time(monkeypatch):
    """A deployment holds one model: OpenVINO backbones are compiled and timed one after the
    other (never two compiled at once), in up to three visits each that share the runs (a slow
    spell of the host falls on every model alike); PyTorch ones round-robin together."""
    pytest.importorskip('openvino', reason='OpenVINO is installed by scripts/setup.sh')
    from mmef.latency import measure
    seen = []
    real = measure.time_round_robin

    def spy(compiled, *args, **kwargs):
        seen.append(sorted(compiled))
        return real(compiled, *args, **kwargs)

    monkeypatch.setattr(measure, 'time_round_robin', spy)
    arch = {'widths': [16, 16, 16, 16], 'depths': [1, 1, 1, 1], 'num_attn_blocks': 1}
    models = {'a': ('v1', arch), 'b': ('v1', dict(arch, depths=[1, 2, 1, 1]))}
    times = measure.measure_models(models, SIZE, 'openvino', threads=1, runs=2, warmup=1,
                                   busy_spread=0)
    assert seen == [['a'], ['b']] * 2 and sorted(times) == ['a', 'b']  # 2 runs: 2 visits
    assert all(len(v) == 2 for v in times.values())
    seen.clear()
    times = measure.measure_models(models, SIZE, 'openvino', threads=1, runs=7, warmup=1,
                                   busy_spread=0)  # visits of 3, 2 and 2 runs
    assert seen == [['a'], ['b']] * measure.VISITS == [['a'], ['b']] * 3
    assert all(len(v) == 7 for v in times.values())
    seen.clear()
    measure.measure_models(models, SIZE, 'torch', threads=1, runs=2, warmup=1, busy_spread=0)
    assert seen == [['a', 'b']]

    # a host whose speed moved between the visits is busy, though each visit was steady;
    # runs of 1, 1 and 1.5 ms (quartiles 1.25x apart) are not (timings faked: nothing compiled)
    import mmef.runtimes

    class Fake:
        def native(self, x):
            return x

    monkeypatch.setattr(measure, 'deployed_backbone', lambda family, arch: None)
    monkeypatch.setattr(mmef.runtimes, 'compile_module', lambda *a, **k: Fake())
    levels = iter([1.0, 1.0, 1.0, 1.0, 1.5, 1.5])
    monkeypatch.setattr(measure, 'time_round_robin', lambda compiled, *a, **k: {
        label: [next(levels)] * a[2] for label in compiled})
    times = measure.measure_models(models, SIZE, 'openvino', threads=1, runs=3, warmup=0,
                                   busy_spread=2)
    assert times == {'a': [1.0, 1.0, 1.5], 'b': [1.0, 1.0, 1.5]}
    levels = iter([1.0, 1.0, 1.0, 1.0, 5.0, 5.0])
    monkeypatch.setattr(measure, 'time_round_robin', lambda compiled, *a, **k: {
        label: [next(levels)] * a[2] for label in compiled})
    from mmef.runtimes import BusyMachine
    with pytest.raises(BusyMachine, match=r'runs of a, b \(over its visits\) spread beyond 2x'):
        measure.measure_models(models, SIZE, 'openvino', threads=1, runs=3, warmup=0,
                               busy_spread=2)
