"""Whole deployed backbones measured on a runtime: the check of a table's predictions, and the
input-size sweep of the latency report.

All models of one measurement are compiled first and then timed round-robin (one run of each in
turn), so that load from other processes hits every model alike. onnxruntime and OpenVINO give
each compiled model its own thread pool, whose threads spin for a while after a run: the next
model would share the cores with them (measured: deployed L1 at 512x512 in onnxruntime 181 ms
round-robin with L3 against 140 ms alone), so those runtimes pause (untimed) before each run.
"""
import json
import math
import statistics
import time

import torch

from .blocks import _randomise
from .space import SearchSpace
from .table import MissingEntries, stage_sums


PAUSE_S = 0.05
VISITS = 3  # visits of each model when models are timed one after the other (OpenVINO)


def deployed_backbone(family, arch, out_indices=(0, 1, 2, 3), seed=0):
    """An EfficientFormer (``family`` 'v1') or EfficientFormerV2 ('v2') of ``arch`` with random
    non-trivial weights, deployed (:func:`mmef.deploy.switch_to_deploy`). ``family`` 'resnet'
    and ``arch`` 18 / 50 give mmdet's ResNet with BN folded, in channels_last (the same
    treatment), for scale."""
    if family == 'resnet':
        import mmdet.models  # noqa: F401  (registers ResNet)
        from mmcv.cnn import fuse_conv_bn
        from mmdet.registry import MODELS

        from ..deploy import ChannelsLast
        model = MODELS.build(dict(type='ResNet', depth=int(arch), out_indices=out_indices,
                                  norm_eval=True, style='pytorch'))
        model.eval()
        model = fuse_conv_bn(_randomise(model, seed)).to(memory_format=torch.channels_last)
        return torch.nn.Sequential(ChannelsLast(), model).eval()
    from ..deploy import switch_to_deploy
    from ..models import EfficientFormer, EfficientFormerV2
    cls = EfficientFormer if family == 'v1' else EfficientFormerV2
    model = _randomise(cls(SearchSpace.default(family).arch(arch), out_indices=out_indices),
                       seed).eval()
    return switch_to_deploy(model)


def arch_label(arch):
    """A short readable name of an arch dict (or the name itself)."""
    if isinstance(arch, str):
        return arch
    label = f"w{'-'.join(map(str, arch['widths']))}_d{'-'.join(map(str, arch['depths']))}" \
        f"_a{arch['num_attn_blocks']}"
    if 'mlp_ratios' in arch:
        label += '_r' + ''.join(str(int(r)) for rs in arch['mlp_ratios'] for r in rs)
    return label


def measure_models(models, input_size, runtime='torch', device='cpu', threads=None, batch=1,
                   runs=10, warmup=3, progress=None, before_round=None, busy_spread=None,
                   retries=1):
    """Times each of ``models`` ({label: (family, arch)}) deployed on ``runtime`` at
    ``input_size``, round-robin (:func:`time_round_robin`); returns {label: [ms per run]}.
    OpenVINO models (without ``before_round``) are compiled and timed one after the other
    instead, each alone in the process, in :data:`VISITS` visits of a share of the runs each
    (every model compiled, timed and released once per visit), so that a slow spell of a
    shared host falls on every model's runs alike, as it does round-robin."""
    from ..runtimes import compile_module
    from .table import in_graph, sweep_runs
    x = torch.randn(batch, 3, *input_size)
    if in_graph(runtime) and before_round is None and len(models) > 1:
        # OpenVINO: one model compiled at a time, as a deployment holds it (a process holding
        # many compiled models runs each slower, docs/latency.md); no round-robin then
        times = {label: [] for label in models}
        for share in sweep_runs(runs, max(1, min(VISITS, runs))):
            for label, model in models.items():
                times[label] += measure_models({label: model}, input_size, runtime, device,
                                               threads, batch, share, warmup, progress, None,
                                               busy_spread, retries)[label]
        from ..runtimes import BUSY_SPREAD, BusyMachine, busy, busy_message
        limit = BUSY_SPREAD if busy_spread is None else busy_spread
        spreads = busy(times, limit)  # a host whose speed moved between the visits
        if spreads:
            raise BusyMachine(busy_message(', '.join(spreads) + ' (over its visits)', spreads,
                                           limit))
        return times
    compiled = {}
    for label, (family, arch) in models.items():
        if progress:
            progress(f'compiling {label}')
        c = compile_module(deployed_backbone(family, arch), x, runtime, device, threads,
                           name=label)
        compiled[label] = (c, c.native(x))
    return time_round_robin(compiled, runtime, device, runs, warmup, progress, before_round,
                            busy_spread, retries)


def time_round_robin(compiled, runtime='torch', device='cpu', runs=10, warmup=3, progress=None,
                     before_round=None, busy_spread=None, retries=1, on_retry=None):
    """Times ``compiled`` ({label: (:class:`mmef.runtimes.Compiled`, its native input)}) of
    ``runtime`` round-robin: ``warmup`` + ``runs`` rounds of one run of each (OpenVINO: one
    untimed and one timed run of each, as its table entries are timed); returns
    {label: [ms per timed run]}. ``before_round(i)``, when given, is called before each round
    (``i`` from 0, warm-up rounds included).

    A machine busy with other processes is noticed, not averaged: when the runs of a model
    spread beyond ``busy_spread`` (q3 / q1, default :data:`mmef.runtimes.BUSY_SPREAD`; 0 checks
    nothing) all models are timed again, up to ``retries`` times, and then
    :class:`mmef.runtimes.BusyMachine` is raised with the reason; ``on_retry`` (default
    ``progress``) is told before each new attempt."""
    from ..runtimes import BUSY_SPREAD, BusyMachine, busy, busy_message, timer
    on_retry = on_retry or progress
    busy_spread = BUSY_SPREAD if busy_spread is None else busy_spread
    from .table import in_graph
    clock = timer(device)
    pause = 0 if runtime.startswith('torch') else PAUSE_S
    # OpenVINO: each timed run right after an untimed run of the same model, as the table's
    # entries are timed (EntryTimer); after the pause alone, a run also wakes the model's
    # threads (+2-4 ms measured on V1 L1 / L3 at 384x512, f32 and bf16)
    warm = in_graph(runtime)
    for attempt in range(retries + 1):
        times = {label: [] for label in compiled}
        for i in range(warmup + runs):
            if progress:
                progress(f'run {i + 1}/{warmup + runs}')
            if before_round is not None:
                before_round(i)
            for label, (c, x) in compiled.items():
                time.sleep(pause)  # the previous model's threads stop spinning
                if warm:
                    c.run(x)
                seconds, out = clock(c.run, x)
                del out
                if i >= warmup:
                    times[label].append(seconds * 1e3)
        spreads = busy(times, busy_spread)
        if not spreads:
            return times
        message = busy_message(', '.join(spreads), spreads, busy_spread)
        if on_retry and attempt < retries:
            on_retry(message.split('. ')[0] + ': timing again')
    raise BusyMachine(message)


def spearman(a, b):
    """Spearman rank correlation of two equal-length sequences (average ranks for ties)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma)**2 for x in ra) * sum((y - mb)**2 for y in rb))
    return cov / var if var else float('nan')


def prediction_study(table, archs, runs=10, warmup=3, progress=None, paired=False,
                     entry_runs=3, busy_spread=None, times=None):
    """Predicted against measured latency of each of ``archs`` ({label: arch}) on the table's
    family, input size, batch, runtime, device and threads. Returns a dict with one row per
    arch (predicted ms, measured median ms, relative error) and the summary: median and worst
    absolute relative error and the Spearman rank correlation.

    By default the predictions are the table's, as built, against whole backbones measured
    now. With ``paired``, the check is made against the machine of the moment: before each
    round of whole-backbone runs, every entry the archs use is timed again (in its context,
    median of ``entry_runs`` runs after one warm-up run; ``entry_ms`` holds them, {key: [ms per
    round]}), each round's prediction is the sum of that round's entries, and ``predicted_ms``
    is the median of the rounds' predictions (``table_ms``: the table's own). This separates
    the table's model of a network (the sum of its parts in context) from the drift of a
    shared machine between the build and the check (docs/latency.md).

    ``times`` ({label: [ms per run]}, not with ``paired``): whole-backbone runs already
    measured (:func:`calibrate_and_check` times its calibration and check archs together).
    """
    if not archs:
        raise ValueError('prediction_study needs at least one arch')
    m = table.meta
    from ..runtimes import runtime_info
    here = runtime_info(m['runtime'], m['device'], m['threads'])
    table.check(allocator=here['allocator'], denormals=here['denormals'])
    used = {label: table.used(arch) for label, arch in archs.items()}
    table_ms = {label: table.predict(arch) for label, arch in archs.items()}
    # the same from the entries' fastest runs, against the fastest whole run: load from other
    # processes only adds time, so the minima are the least disturbed estimates (not for
    # entries timed in-graph, whose runs are differences of two models' runs)
    from .table import in_graph
    minima = not in_graph(m['runtime'])
    predicted_min = {label: table.predict(arch, stat='min') if minima else None
                     for label, arch in archs.items()}
    before_round, entry_ms = None, {}
    if paired:
        from .table import EntryTimer
        keys = sorted({e for u in used.values() for e in u})
        contexts, timers = {}, {}
        for i, e in enumerate(keys):
            if progress:
                progress(f'compiling entry {i + 1}/{len(keys)} {e.key}')
            timers[e.key] = EntryTimer(table.family, e, m['input_size'], m['runtime'],
                                       m['device'], m['threads'], m['batch'], contexts)
        entry_ms = {key: [] for key in timers}

        def before_round(i):
            if i == 0:  # a new attempt (measure_models times again on a busy machine)
                for v in entry_ms.values():
                    v.clear()
            for key, t in timers.items():
                ms = statistics.median(t.time(entry_runs, warmup=1))
                if i >= warmup:
                    entry_ms[key].append(ms)
    if times is None:
        times = _measure(table, archs, runs, warmup, progress, busy_spread, before_round)
    elif paired:
        raise ValueError('a paired study times its own runs: no times to give it')
    if paired:
        rounds = {label: [table.corrected(u, {key: v[r] for key, v in entry_ms.items()})
                          for r in range(runs)] for label, u in used.items()}
        predicted = {label: statistics.median(v) for label, v in rounds.items()}
        predicted_min = {label: min(v) if minima else None for label, v in rounds.items()}
    else:
        predicted = table_ms
    fitted_on = (table.meta.get('correction') or {}).get('fitted_on', [])
    rows = []
    for label, arch in archs.items():
        ts = times[label]
        measured = statistics.median(ts)
        q1_q3 = statistics.quantiles(ts, n=4, method='inclusive')[::2] if len(ts) > 1 \
            else [measured] * 2
        rows.append(dict(label=label, arch=table.arch(arch) if isinstance(arch, str) else arch,
                         calibration=label in fitted_on,
                         predicted_ms=predicted[label], measured_ms=measured,
                         measured_q1_q3=q1_q3, measured_min=min(ts),
                         predicted_min_ms=predicted_min[label], table_ms=table_ms[label],
                         raw_ms=table.predict(arch, raw=True),
                         error=predicted[label] / measured - 1))
    errors = [abs(r['error']) for r in rows]
    summary = dict(n=len(rows), median_abs_error=statistics.median(errors),
                   worst_abs_error=max(errors),
                   spearman=spearman([r['predicted_ms'] for r in rows],
                                     [r['measured_ms'] for r in rows]), minima=None)
    if minima:
        min_errors = [abs(r['predicted_min_ms'] / r['measured_min'] - 1) for r in rows]
        summary['minima'] = dict(median_abs_error=statistics.median(min_errors),
                                 worst_abs_error=max(min_errors),
                                 spearman=spearman([r['predicted_min_ms'] for r in rows],
                                                   [r['measured_min'] for r in rows]))
    result = dict(table=table.describe(), meta={k: m[k] for k in (
        'family', 'input_size', 'batch', 'runtime', 'runtime_version', 'device', 'threads',
        'dtype', 'cpu', 'allocator', 'denormals') if k in m}, runs=runs, warmup=warmup,
        paired=paired, rows=rows, summary=summary)
    if paired:
        result.update(entry_runs=entry_runs, entry_ms=entry_ms)
    return result


# what a table's predictions are held to (issue 26): the median and the worst absolute relative
# error of whole deployed backbones, and the rank correlation
TARGETS = dict(median_abs_error=0.05, worst_abs_error=0.10, spearman=0.95)


def misses(summary, targets=TARGETS):
    """The targets a study's ``summary`` misses, as readable phrases (empty: all met). The
    rank correlation is judged from 3 archs on."""
    out = []
    if summary['median_abs_error'] > targets['median_abs_error']:
        out.append(f"median |error| {100 * summary['median_abs_error']:.1f} % > "
                   f"{100 * targets['median_abs_error']:g} %")
    if summary['worst_abs_error'] > targets['worst_abs_error']:
        out.append(f"worst |error| {100 * summary['worst_abs_error']:.1f} % > "
                   f"{100 * targets['worst_abs_error']:g} %")
    if summary['n'] >= 3 and not summary['spearman'] >= targets['spearman']:
        out.append(f"Spearman {summary['spearman']:.3f} < {targets['spearman']}")
    return out


def check_archs(table, archs=None, random=3, seed=1000):
    """The whole backbones a table checks itself on: ``archs`` (released names or dicts) when
    given, else the family's released variants the table covers; plus ``random`` seeded random
    archs of its space whose entries it has (a table of a few archs' entries has none).
    Returns {label: arch}."""
    from ..models import EfficientFormer, EfficientFormerV2
    names = archs if archs is not None else list(
        (EfficientFormer if table.family == 'v1' else EfficientFormerV2).arch_settings)
    out = {}
    candidates = [(arch_label(a), a) for a in names]
    candidates += [(arch_label(a), a) for a in table.space.random_archs(random, seed)]
    for label, arch in candidates:
        try:
            table.used(arch)
        except MissingEntries:
            continue
        out[label] = arch
    return out


# the prior of the correction's scales (the plain sum) and how strongly a fit is held to it: a
# scale 0.1 away from 1 costs as much as a 3 % error on one calibration backbone
RIDGE = 0.1
SCALE_RANGE = (0.5, 1.5)  # a fitted stage scale outside this is not a correction but a bad fit
PER_ENTRY_SHARE = 0.25  # nor a per-entry time that makes more than this share of a plain sum
MAX_FIT_ERROR = 0.10  # nor one that leaves its own archs off by more than this (median)


def fit_correction(table, archs, measured, ridge=RIDGE):
    """Fits the correction of ``table``'s sums to whole backbones: ``measured`` ({label: ms})
    of ``archs`` ({label: arch}) against ``sum_s scale_s * S_s + attention_extra * A +
    per_entry_ms * n``, with ``S_s`` the sum of stage s's entries, ``A`` that of the attention
    entries and ``n`` the entries used; least squares of the relative errors, the scales held
    towards 1 and ``attention_extra`` towards 0 (``ridge``). What the sum of parts misses is
    systematic and depends on the host, the runtime and the input size (docs/latency.md):
    timed alone, each part finds the cache and the heap as its own last run left them; in a
    network it finds them as the other parts left them, and attention, with its large
    intermediate buffers, differs most. Returns the ``correction`` dict or None when the fit
    is not sound: fewer than 8 archs, a scale outside :data:`SCALE_RANGE`, a per-entry time
    beyond :data:`PER_ENTRY_SHARE` of a plain sum, a median error on its own archs over
    :data:`MAX_FIT_ERROR` or no better than the plain sum's there."""
    import numpy as np
    labels = list(archs)
    if len(labels) < 8:
        return None
    rows, y = [], []
    ms = {k: v['ms'] for k, v in table.entries.items()}
    for label in labels:
        sums, attention, n = stage_sums(table.used(archs[label]), ms)
        rows.append(sums + [attention, n])
        y.append(measured[label])
    x, y = np.array(rows), np.array(y)
    prior = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    a = np.vstack([x / y[:, None], np.sqrt(ridge) * np.eye(6)[:5]])
    b = np.concatenate([np.ones(len(y)), np.sqrt(ridge) * prior])
    theta = np.linalg.lstsq(a, b, rcond=None)[0]
    scales, extra, per_entry = [float(v) for v in theta[:4]], float(theta[4]), float(theta[5])
    fit = x @ theta / y - 1
    plain_ms = x[:, :4].sum(1)
    plain = plain_ms / y - 1
    if not all(SCALE_RANGE[0] <= v <= SCALE_RANGE[1] for v in scales + [1 + extra]) or \
            np.any(np.abs(per_entry * x[:, 5]) > PER_ENTRY_SHARE * plain_ms) or \
            np.median(np.abs(fit)) > MAX_FIT_ERROR or \
            np.median(np.abs(fit)) >= np.median(np.abs(plain)):
        return None
    return dict(model='sum_s stage_scale[s] * (stage s entries) + attention_extra * (attention '
                'entries) + per_entry_ms * entries', stage_scale=[round(v, 5) for v in scales],
                attention_extra=round(extra, 5), per_entry_ms=round(per_entry, 5),
                ridge=ridge, fitted_on=labels,
                fit=dict(median_abs_error=float(np.median(np.abs(fit))),
                         worst_abs_error=float(np.abs(fit).max()),
                         plain_median_abs_error=float(np.median(np.abs(plain))),
                         plain_worst_abs_error=float(np.abs(plain).max())))


def work(arch):
    """A rough size of ``arch`` for ranking archs (not a latency): each stage's depth times its
    width squared, weighed by its map area (a quarter per stage)."""
    return sum(d * w * w / 4 ** i for i, (d, w) in enumerate(zip(arch['depths'],
                                                                     arch['widths'])))


def calibration_archs(space, n, seed=2000):
    """``n`` archs of ``space`` to fit a table's correction on, spread over what the
    correction's terms weigh: ``n - n // 2`` over the share of attention blocks (5n seeded
    random archs ranked by that share, evenly spaced picks: random archs are mostly light on
    attention, released variants are not) and ``n // 2`` over size (:func:`work`; evenly
    spaced from the smallest to the largest of the other random archs and 5n large ones, drawn
    from the top half of each range, seed + 1: uniform draws stay far below the widest
    variants, e.g. V1 L7, which a correction fitted on them extrapolates to). Returns a list
    of arch dicts: the share half in order of share, then the size half in order of size."""
    if n <= 0:
        return []
    by_size = n // 2
    candidates = space.random_archs(5 * n, seed)

    def share(arch):
        blocks = sum(arch['depths'])
        return (arch['num_attn_blocks'] * (2 if space.family == 'v2' else 1)) / blocks

    ranked = sorted(candidates, key=share)
    chosen = [ranked[int((i + 0.5) * len(ranked) / (n - by_size))] for i in range(n - by_size)]
    pool = sorted([a for a in candidates if a not in chosen]
                  + space.random_archs(5 * n, seed + 1, least=0.5), key=work)
    last = len(pool) - 1  # the smallest and the largest included: the extremes matter most
    return chosen + [pool[last - round(i * last / max(by_size - 1, 1))]
                     for i in reversed(range(by_size))]


def _measure(table, archs, runs, warmup, progress, busy_spread, before_round=None):
    """:func:`measure_models` of ``archs`` ({label: arch}) on ``table``'s settings."""
    m = table.meta
    return measure_models({label: (table.family, arch) for label, arch in archs.items()},
                          m['input_size'], m['runtime'], m['device'], m['threads'], m['batch'],
                          runs, warmup, progress, before_round, busy_spread)


def calibrate(table, archs, runs=5, warmup=2, progress=None, busy_spread=None, times=None):
    """Times ``archs`` ({label: arch}) as whole deployed backbones on the table's settings
    (``times``: {label: [ms per run]} already measured) and stores :func:`fit_correction`'s
    correction in ``table.meta['correction']`` (None when the fit is not sound, with the
    reason under ``meta['correction_refused']``). Returns it."""
    table.meta.pop('correction', None)
    if times is None:
        times = _measure(table, archs, runs, warmup, progress, busy_spread)
    measured = {label: statistics.median(ts) for label, ts in times.items()}
    correction = fit_correction(table, archs, measured)
    if correction is None:
        table.meta['correction_refused'] = (
            f'no sound fit on {len(archs)} archs (needs >= 8, scales in {SCALE_RANGE}, a '
            f'per-entry time within {PER_ENTRY_SHARE:g} of each sum, a median error within '
            f'{MAX_FIT_ERROR:g} and better than the plain sum): predictions are the plain sums')
    else:
        correction['measured_ms'] = {k: round(v, 3) for k, v in measured.items()}
        table.meta.pop('correction_refused', None)
    table.meta['correction'] = correction
    return correction


def calibrate_and_check(table, calibrate_with=None, check_with=None, busy_spread=None,
                        progress=None):
    """What a build ends with: fits the table's correction on the archs of ``calibrate_with``
    (a dict: ``archs``, ``random``, ``seed``, ``runs``, ``warmup``; :func:`check_archs`
    picks them) and then checks it on those of ``check_with`` (the same keys) that the
    correction was not fitted on. Either may be None. Returns the archs fitted on.

    With both, the two sets are timed in one measurement (round-robin, or one after the other
    alternating between the sets where the runtime times one model at a time), with the
    larger runs and warm-up of the two: on a shared host whose speed drifts by more than the
    targets within minutes (docs/latency.md), a check timed after its calibration measures
    that drift, not the correction it was fitted for."""
    fitted_on, times = [], None
    cal = chk = None
    if calibrate_with:
        c = calibrate_with
        cal = check_archs(table, c.get('archs', []), c.get('random', 10), c.get('seed', 2000))
        fitted_on = list(cal)
    if check_with:
        c = check_with
        chk = {label: a for label, a in check_archs(
            table, c.get('archs'), c.get('random', 3), c.get('seed', 1000)).items()
            if label not in fitted_on}  # checked on other archs than it was fitted on
    cal_runs = (calibrate_with or {}).get('runs', 5), (calibrate_with or {}).get('warmup', 2)
    chk_runs = (check_with or {}).get('runs', 5), (check_with or {}).get('warmup', 2)
    if cal and chk:
        order = list(cal.items())
        for i, item in enumerate(chk.items()):  # the check archs spread among the others
            order.insert(min(len(order), 2 * i + 1), item)
        cal_runs = chk_runs = max(cal_runs[0], chk_runs[0]), max(cal_runs[1], chk_runs[1])
        times = _measure(table, dict(order), *cal_runs, progress, busy_spread)
    if cal:
        calibrate(table, cal, *cal_runs, progress, busy_spread,
                  times=times and {k: times[k] for k in cal})
    if chk:
        self_check(table, chk, *chk_runs, progress, busy_spread,
                   times=times and {k: times[k] for k in chk}, with_calibration=bool(cal))
    return fitted_on


def self_check(table, archs, runs=5, warmup=2, progress=None, busy_spread=None, times=None,
               with_calibration=False):
    """Times ``archs`` ({label: arch}) as whole deployed backbones on the table's settings
    (``times``: already measured, ``with_calibration``: in one measurement with the
    calibration archs), stores the prediction errors in ``table.meta['check']`` and returns
    that record (rows, summary, the targets it misses, date, CPU)."""
    import datetime

    from ..runtimes import cpu_info
    result = prediction_study(table, archs, runs, warmup, progress, busy_spread=busy_spread,
                              times=times)
    summary = {k: v for k, v in result['summary'].items() if k != 'minima'}
    raw = [abs(r['raw_ms'] / r['measured_ms'] - 1) for r in result['rows']]
    check = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), cpu=cpu_info(),
                 runs=runs, warmup=warmup, with_calibration=with_calibration,
                 summary=summary, misses=misses(summary),
                 corrected=bool(table.meta.get('correction')),
                 plain=dict(median_abs_error=statistics.median(raw), worst_abs_error=max(raw)),
                 rows=[{k: r[k] for k in ('label', 'arch', 'predicted_ms', 'raw_ms',
                                          'measured_ms', 'measured_q1_q3', 'error',
                                          'calibration')} for r in result['rows']])
    table.meta['check'] = check = json.loads(json.dumps(check))  # as the file will hold it
    return check


def count_work(module, x):
    """The arithmetic of one inference forward of ``module`` on ``x``, counted at the ATen
    operators it calls: ``gemm`` flops (mm / addmm / bmm / baddbmm / matmul / linear),
    ``conv`` flops of dense convolutions, ``depthwise`` flops (grouped convolutions), and the
    ``gelu`` and ``softmax`` elements (2 flops a multiply-add)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = dict(gemm=0, conv=0, depthwise=0, gelu=0, softmax=0)

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if name in ('mm', 'addmm', 'bmm', 'baddbmm', 'matmul'):
                a = args[1] if name in ('addmm', 'baddbmm') else args[0]
                counts['gemm'] += 2 * out.numel() * a.shape[-1]
            elif name == 'linear':
                counts['gemm'] += 2 * out.numel() * args[1].shape[1]
            elif name in ('conv2d', 'convolution'):
                w = args[1]
                groups = args[8] if name == 'convolution' else (args[6] if len(args) > 6 else 1)
                kind = 'conv' if groups == 1 else 'depthwise'
                counts[kind] += 2 * out.numel() * w[0].numel()
            elif name in ('gelu', 'gelu_'):
                counts['gelu'] += args[0].numel()
            elif name in ('_softmax', 'softmax'):
                counts['softmax'] += args[0].numel()
            return out

    with torch.inference_mode(), Count():
        module(x)
    return counts


def host_rates(threads=None, repeats=9):
    """This host's best rates (the fastest of ``repeats`` runs): ``gemm`` flop/s of a 2048^3
    sgemm, ``gelu`` and ``softmax`` elements per second (16M elements; (8, 500, 1050) rows)."""
    def fastest(fn):
        fn()
        best = float('inf')
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    if threads:
        torch.set_num_threads(threads)
    with torch.inference_mode():
        a, b, c = torch.randn(2048, 2048), torch.randn(2048, 2048), torch.empty(2048, 2048)
        g, h = torch.randn(2**24), torch.empty(2**24)
        s = torch.randn(8, 500, 1050)
        return dict(gemm=2 * 2048**3 / fastest(lambda: torch.mm(a, b, out=c)),
                    gelu=g.numel() / fastest(lambda: torch._C._nn.gelu(g, out=h)),
                    softmax=s.numel() / fastest(lambda: torch.softmax(s, -1, out=s)))


def arithmetic_floor(counts, rates):
    """A lower bound of a forward's time in seconds: its GEMM and dense-conv flops at the
    sgemm rate, its GELU and softmax elements at theirs; everything else (depthwise convs,
    pooling, adds, norms, copies, memory traffic) counts nothing. Returns the total and the
    parts."""
    parts = dict(gemm_conv=(counts['gemm'] + counts['conv']) / rates['gemm'],
                 gelu=counts['gelu'] / rates['gelu'], softmax=counts['softmax'] / rates['softmax'])
    return sum(parts.values()), parts
