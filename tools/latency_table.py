"""Latency tables of EfficientFormer blocks on this machine, predictions, checks and the report.

Subcommands:
  build     time every block the search space can use (deployed, at the map size of its stage)
            on a runtime and write the table (JSON); resumes an interrupted build; re-times
            the entries that stand out from their neighbours (a burst of load from elsewhere)
            and ends by timing a few whole backbones: the table's own check, stored in it
  check     that check again (or for the first time) on a finished table
  retime    the re-timing of outlying entries again on a finished table
  predict   predicted latency of a backbone (a released name or a JSON arch dict) and its parts
  study     predicted against measured whole deployed backbones: the released variants and
            seeded random archs of the search space; writes the rows and the summary (JSON)
  sweep     measured whole deployed backbones at several input sizes (V1, V2, mmdet ResNet-50)
  observe   the paper's four latency observations (patch embedding vs conv stem, reshapes and
            pool vs attention, Conv-BN vs LayerNorm / GroupNorm, activations) timed here
  floor     a lower bound of a deployed backbone's time here: its GEMM / conv flops, GELU and
            softmax elements at this host's best measured rates (nothing else counted)
  report    figures (PNG) and markdown tables from tables, studies and sweeps

Examples:
  python tools/latency_table.py build --family v1 --size 800 1344 --runtime torch --threads 2 \\
      --out work_dirs/lut_v1_800x1344.json
  python tools/latency_table.py predict work_dirs/lut_v1_800x1344.json --arch l1
  python tools/latency_table.py predict work_dirs/lut_v1_800x1344.json \\
      --arch '{"widths": [48, 96, 224, 448], "depths": [3, 2, 6, 4], "num_attn_blocks": 1}'
  python tools/latency_table.py study work_dirs/lut_v1_800x1344.json --random 20 \\
      --out work_dirs/study_v1_800x1344.json
  python tools/latency_table.py observe --size 800 1344 --runtime onnxruntime \\
      --out work_dirs/observe_onnxruntime.json
  python tools/latency_table.py report work_dirs/*.json --out-dir docs/latency
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _arch(text):
    text = text.strip()
    if not text.startswith('{'):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'an arch is a released name or a JSON dict; {text!r} is not valid '
                         f'JSON ({e})')


def _hw(text):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'sizes are HxW, e.g. 800x1344; got {text!r}')
    return h, w


def _widths(values):
    if values is None:
        return None
    return values[0] if len(values) == 1 else values


def cmd_build(args):
    from mmef.latency import SearchSpace, build_table
    from mmef.latency.measure import calibration_archs
    from mmef.latency.blocks import arch_entries
    space = SearchSpace.default(args.family).with_widths(_widths(args.min_widths),
                                                        _widths(args.max_widths))
    keys = None
    check = dict(random=args.check_random, runs=args.check_runs)
    fit_archs = calibration_archs(space, args.calibrate, CALIBRATION_SEED)
    calibrate = dict(archs=fit_archs, random=0, runs=args.check_runs) if fit_archs else None
    if args.archs is not None or args.random:
        given = [_arch(a) for a in args.archs or []]
        for a in given:
            space.check(a)
        randoms = space.random_archs(args.random, args.seed)
        # only these archs' entries (and those of the correction's archs) are timed; the check
        # runs on the given archs and the first --check-random random ones
        keys = sorted({e.key for a in given + randoms + fit_archs
                       for e in arch_entries(args.family, space.arch(a))})
        check.update(archs=given + randoms[:args.check_random], random=0)
    table = build_table(args.family, tuple(args.size), args.out, args.runtime, args.device,
                        args.threads, args.batch, args.runs, args.warmup, space, keys,
                        progress=not args.no_progress, overwrite=args.overwrite,
                        busy_spread=args.busy_spread, check=check, calibrate=calibrate,
                        sweeps=args.sweeps)
    print(f'{args.out}: {table.describe()}')
    _print_drift(table)
    _print_correction(table)
    _print_check(table)


CALIBRATION_SEED = 2000  # random archs of the correction's fit (the check's are seed 1000)


def _print_drift(table):
    d = table.meta.get('drift')
    if d:
        print(f"drift of the host during the build: the {d['sweeps']} sweeps' sums of each "
              f"stage's entries differ by {', '.join(f'{100 * v:.1f}' for v in d['per_stage'])} "
              f"% (stages 1-4; the entries are the medians of all the sweeps' runs)")


def _print_correction(table):
    c = table.meta.get('correction')
    if c is None:
        print(f"correction: none ({table.meta.get('correction_refused', 'not calibrated')})")
        return
    f = c['fit']
    print(f"correction fitted on {len(c['fitted_on'])} whole backbones: stage scales "
          f"{', '.join(f'{v:.3f}' for v in c['stage_scale'])}, attention "
          f"{c['attention_extra']:+.3f}, {c['per_entry_ms']:+.3f} ms per "
          f"entry (on those archs: median |error| {100 * f['median_abs_error']:.1f} %, worst "
          f"{100 * f['worst_abs_error']:.1f} %; the plain sum "
          f"{100 * f['plain_median_abs_error']:.1f} %, {100 * f['plain_worst_abs_error']:.1f} %)")


def _print_check(table):
    """The table's own check (whole backbones timed after its build) and what it misses."""
    from mmef.latency.report import spearman_text
    check = table.meta['check']
    together = ', timed together with the calibration archs' if check.get('with_calibration') \
        else ''
    print(f"check ({check['date']}, {check['runs']} runs of each whole deployed backbone"
          f"{together}; {'corrected' if check.get('corrected') else 'plain sums'}):")
    print('| arch | predicted ms | plain sum ms | measured ms | error |\n|---|---|---|---|---|')
    for r in check['rows']:
        print(f"| {r['label']} | {r['predicted_ms']:.1f} | {r.get('raw_ms', r['predicted_ms']):.1f}"
              f" | {r['measured_ms']:.1f} | {100 * r['error']:+.1f} % |")
    if 'plain' in check and check.get('corrected'):
        print(f"  the plain sums: median |error| {100 * check['plain']['median_abs_error']:.1f} %, "
              f"worst {100 * check['plain']['worst_abs_error']:.1f} %")
    s = check['summary']
    print(f"{s['n']} archs: median |error| {100 * s['median_abs_error']:.1f} %, worst "
          f"{100 * s['worst_abs_error']:.1f} %, Spearman {spearman_text(s)}: "
          + (f"MISSES the targets ({'; '.join(check['misses'])})" if check['misses']
             else 'within the targets'))


def cmd_check(args):
    import torch

    from mmef.latency import LatencyTable
    from mmef.latency.measure import calibrate_and_check, calibration_archs, check_archs
    table = LatencyTable.load(args.table)
    torch.set_num_threads(table.meta['threads'])
    if not check_archs(table, args.archs, args.random):
        raise ValueError(f'{args.table} has the entries of none of the archs to check with')
    old = table.meta.get('check')
    calibrate_with = dict(archs=calibration_archs(table.space, args.calibrate, CALIBRATION_SEED),
                          random=0, runs=args.runs, warmup=args.warmup) if args.calibrate else None
    calibrate_and_check(table, calibrate_with,
                        dict(archs=args.archs, random=args.random, runs=args.runs,
                             warmup=args.warmup),
                        args.busy_spread, progress=None if args.no_progress else
                        (lambda s: print(f'  {s}', file=sys.stderr, flush=True)))
    table.save(args.table)
    print(f'{args.table}: {table.describe()}')
    if old:
        print(f"(replaces the check of {old['date']}: median |error| "
              f"{100 * old['summary']['median_abs_error']:.1f} %, worst "
              f"{100 * old['summary']['worst_abs_error']:.1f} %)")
    if args.calibrate:
        _print_correction(table)
    _print_check(table)


def _warn(table):
    for w in table.warnings():
        print(f'warning: {w}', file=sys.stderr)


def cmd_retime(args):
    import torch

    from mmef.latency import LatencyTable
    from mmef.latency.table import retime_outliers
    from mmef.runtimes import runtime_info
    table = LatencyTable.load(args.table)
    m = table.meta
    torch.set_num_threads(m['threads'])
    here = runtime_info(m['runtime'], m['device'], m['threads'])
    table.check(allocator=here['allocator'], denormals=here['denormals'])
    flagged = retime_outliers(table, m['runs'], m['warmup'], progress=not args.no_progress)
    table.save(args.table)
    for key in flagged:
        print(f"{key}: {table.entries[key]['retimed']} -> {table.entries[key]['ms']}")
    print(f'{args.table}: re-timed {len(flagged)} entries')


def cmd_predict(args):
    from mmef.latency import LatencyTable
    table = LatencyTable.load(args.table)
    table.check(family=args.family, input_size=args.size, runtime=args.runtime,
                device=args.device, batch=args.batch)
    out_indices = tuple(args.out_indices)
    parts = table.breakdown(_arch(args.arch), out_indices)
    print(table.describe())
    _warn(table)
    print(f'predicted: {parts["total"]:.2f} ms')
    print('per stage: ' + ', '.join(f'{s}: {v:.2f}' for s, v in sorted(parts['per_stage'].items())))
    print('per kind:  ' + ', '.join(f'{k}: {v:.2f}' for k, v in parts['per_kind'].items()))
    if args.rows:
        print('| entry | count | ms each | ms |\n|---|---|---|---|')
        for key, n, each, total in parts['rows']:
            print(f'| {key} | {n} | {each:.3f} | {total:.2f} |')


def cmd_study(args):
    import torch

    from mmef.latency import LatencyTable
    from mmef.latency.measure import arch_label, prediction_study
    from mmef.latency.report import spearman_text
    table = LatencyTable.load(args.table)
    torch.set_num_threads(table.meta['threads'])
    _warn(table)
    space = table.space
    archs = {name: name for name in (args.archs or [])}
    for arch in space.random_archs(args.random, args.seed):
        archs[arch_label(arch)] = arch
    result = prediction_study(table, archs, args.runs, args.warmup,
                              progress=lambda s: print(f'  {s}', file=sys.stderr, flush=True),
                              paired=args.paired, entry_runs=args.entry_runs,
                              busy_spread=args.busy_spread)
    result['seed'] = args.seed
    print(result['table'] + (' (paired: entries timed again before each round)'
                             if args.paired else ''))
    print('| arch | predicted ms | measured ms | error |\n|---|---|---|---|')
    for r in result['rows']:
        fitted = ' (the correction was fitted on it)' if r['calibration'] else ''
        print(f"| {r['label']}{fitted} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | "
              f"{100 * r['error']:+.1f} % |")
    s = result['summary']
    fastest = (f"{100 * s['minima']['median_abs_error']:.1f} %, "
               f"{100 * s['minima']['worst_abs_error']:.1f} %, "
               f"{spearman_text(dict(s['minima'], n=s['n']))} (fastest runs)") \
        if s['minima'] else 'fastest runs not compared: the entries were timed in-graph, as ' \
        'differences'
    print(f"{s['n']} archs: median |error| {100 * s['median_abs_error']:.1f} %, worst "
          f"{100 * s['worst_abs_error']:.1f} %, Spearman {spearman_text(s)} (medians); "
          + fastest)
    if args.out:
        _write_json(args.out, dict(kind='study', **result))


def cmd_sweep(args):
    import statistics

    import torch

    from mmef.latency.measure import measure_models
    from mmef.runtimes import runtime_info
    torch.set_num_threads(args.threads)
    models = {}
    for name in args.models:
        family = 'resnet' if name.startswith('r') else 'v2' if name.startswith('v2') else 'v1'
        models[name] = (family, name[1:] if family == 'resnet' else
                        name[2:] if family == 'v2' else name)
    rows = []
    for hw in args.sizes:
        print(f'input {hw[0]}x{hw[1]}', file=sys.stderr, flush=True)
        times = measure_models(models, hw, args.runtime, args.device, args.threads, 1,
                               args.runs, args.warmup, busy_spread=args.busy_spread)
        for name, ts in times.items():
            rows.append(dict(model=name, input_size=list(hw), ms=statistics.median(ts)))
            print(f'| {name} | {hw[0]}x{hw[1]} | {rows[-1]["ms"]:.1f} |')
    _write_json(args.out, dict(kind='sweep', meta=runtime_info(args.runtime, args.device,
                                                                args.threads),
                               runs=args.runs, warmup=args.warmup, rows=rows))


def cmd_floor(args):
    import torch

    from mmef.latency.measure import arithmetic_floor, count_work, deployed_backbone, host_rates
    from mmef.runtimes import cpu_info
    torch.set_num_threads(args.threads)
    rates = host_rates()
    print(f"{cpu_info()['model']}, torch {torch.__version__}, {args.threads} threads: sgemm "
          f"{rates['gemm'] / 1e9:.0f} GFLOP/s, GELU {rates['gelu'] / 1e9:.2f} G/s, softmax "
          f"{rates['softmax'] / 1e9:.2f} G/s (fastest of 9 runs)")
    print('| model | input | GEMM / conv GFLOP | depthwise GFLOP | GELU M | softmax M | floor ms '
          '(GEMM / conv + GELU + softmax) |\n|---|---|---|---|---|---|---|')
    x = torch.randn(1, 3, *args.size)
    for name in args.models:
        family = 'v2' if name.startswith('v2') else 'v1'
        model = deployed_backbone(family, name[2:] if family == 'v2' else name)
        c = count_work(model, x)
        total, parts = arithmetic_floor(c, rates)
        print(f"| {name} | {args.size[0]}x{args.size[1]} | {(c['gemm'] + c['conv']) / 1e9:.1f} | "
              f"{c['depthwise'] / 1e9:.2f} | {c['gelu'] / 1e6:.0f} | {c['softmax'] / 1e6:.0f} | "
              f"{1e3 * total:.0f} ({1e3 * parts['gemm_conv']:.0f} + {1e3 * parts['gelu']:.0f} + "
              f"{1e3 * parts['softmax']:.0f}) |")


def cmd_observe(args):
    from mmef.latency.observe import observe
    result = observe(tuple(args.size), args.runtime, args.device, args.threads, 1, args.runs,
                     args.warmup, progress=None if args.no_progress else
                     (lambda s: print(f'  {s}', file=sys.stderr, flush=True)),
                     busy_spread=args.busy_spread, only=args.only)
    m = result['meta']
    print(f"input {args.size[0]}x{args.size[1]}, {m['runtime']} {m['runtime_version']} "
          f"({m['dtype']}), {m['cpu']['model']}, {m['threads']} threads")
    for obs in result['observations']:
        print(f"\n({obs['number']}) {obs['claim']}\n    holds here: "
              f"{'yes' if obs['holds'] else 'NO'} (the rule: it holds where {obs['rule']})")
        for r in obs['rows']:
            print(f"    {r['label']:<48} {r['ms']:9.2f} ms  {r['ratio']:5.2f}x")
    if args.out:
        _write_json(args.out, result)


def cmd_report(args):
    from mmef.latency.report import write_report
    written = write_report(args.inputs, args.out_dir)
    for path in written:
        print(path)


def _write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1)
        f.write('\n')
    os.replace(tmp, path)
    print(f'wrote {path}')


def parse_args(argv=None):
    from mmef.latency.table import SWEEPS
    from mmef.runtimes import RUNTIMES
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    sub = parser.add_subparsers(dest='command', required=True)

    b = sub.add_parser('build', help='time the blocks and write a table')
    b.add_argument('--family', choices=['v1', 'v2'], required=True)
    b.add_argument('--size', nargs=2, type=int, metavar=('H', 'W'), required=True)
    b.add_argument('--runtime', choices=RUNTIMES, default='torch')
    b.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    b.add_argument('--threads', type=int, default=None, help='default: torch\'s')
    b.add_argument('--batch', type=int, default=1)
    b.add_argument('--runs', type=int, default=10)
    b.add_argument('--warmup', type=int, default=3, help='untimed runs before each visit of '
                   'an entry')
    b.add_argument('--sweeps', type=int, default=None,
                   help=f'(default {SWEEPS}, or --runs when fewer) passes over the whole table '
                   'that share each entry\'s --runs, so that a slow spell of the host falls on '
                   'every stage alike (docs/latency.md); their difference is reported as the '
                   'host\'s drift')
    b.add_argument('--min-widths', nargs='+', type=int, metavar='W',
                   help='one width for every stage or four (default: the width step)')
    b.add_argument('--max-widths', nargs='+', type=int, metavar='W',
                   help='one width for every stage or four (default: widest released variant)')
    b.add_argument('--archs', nargs='+', metavar='ARCH',
                   help='only the entries these archs use (names or JSON arch dicts)')
    b.add_argument('--random', type=int, default=0,
                   help='only the entries these archs and N seeded random archs use (the '
                   'random archs of `study --random N --seed S`)')
    b.add_argument('--seed', type=int, default=0)
    b.add_argument('--out', required=True)
    b.add_argument('--overwrite', action='store_true', help='replace an existing --out file')
    b.add_argument('--no-progress', action='store_true')
    b.add_argument('--glibc-default', dest='keep_freed_memory', action='store_false',
                   help='time with glibc\'s default heap (see docs/latency.md; the default '
                   'keeps freed buffers, mmef.runtimes.keep_freed_memory)')
    _denormal_option(b)
    b.add_argument('--check-random', type=int, default=3,
                   help='the build ends by timing whole backbones and storing the table\'s '
                   'errors on them: the released variants and N random archs (seed 1000); '
                   'with --archs / --random: the --archs and the first N random ones')
    b.add_argument('--check-runs', type=int, default=5, help='timed runs of each in that check '
                   'and in the calibration')
    b.add_argument('--calibrate', type=int, default=12, metavar='N',
                   help='before the check, time N random whole backbones (seed 2000, spread '
                   'over the share of attention; with --archs / --random their entries are '
                   'timed too) and fit the table\'s correction of its sums on them (0: none; '
                   'docs/latency.md)')
    _busy_option(b)
    b.set_defaults(func=cmd_build)

    c = sub.add_parser('check', help='time whole backbones and store the table\'s errors on '
                       'them in the table (what build does at its end)')
    c.add_argument('table')
    c.add_argument('--archs', nargs='*', default=None, metavar='NAME',
                   help='released variants (default: all of the family)')
    c.add_argument('--random', type=int, default=3, help='random archs (seed 1000)')
    c.add_argument('--calibrate', type=int, default=0, metavar='N',
                   help='first fit the table\'s correction on N random whole backbones (seed '
                   '2000, those whose entries the table has), as build does')
    c.add_argument('--runs', type=int, default=5)
    c.add_argument('--warmup', type=int, default=2)
    c.add_argument('--no-progress', action='store_true')
    c.add_argument('--glibc-default', dest='keep_freed_memory', action='store_false')
    _denormal_option(c)
    _busy_option(c)
    c.set_defaults(func=cmd_check)

    t = sub.add_parser('retime', help='re-time the entries that stand out from their '
                       'neighbours (build does this at its end)')
    t.add_argument('table')
    t.add_argument('--no-progress', action='store_true')
    t.add_argument('--glibc-default', dest='keep_freed_memory', action='store_false')
    _denormal_option(t)
    t.set_defaults(func=cmd_retime)

    p = sub.add_parser('predict', help='predicted latency of a backbone')
    p.add_argument('table')
    p.add_argument('--arch', required=True, help="a name ('l1') or a JSON arch dict")
    p.add_argument('--out-indices', nargs='+', type=int, default=[0, 1, 2, 3])
    p.add_argument('--rows', action='store_true', help='print every entry used')
    # what the prediction is for: refused when the table was built for something else
    p.add_argument('--family', choices=['v1', 'v2'])
    p.add_argument('--size', nargs=2, type=int, metavar=('H', 'W'))
    p.add_argument('--runtime', choices=RUNTIMES)
    p.add_argument('--device', choices=['cpu', 'cuda'])
    p.add_argument('--batch', type=int)
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser('study', help='predicted against measured whole backbones')
    s.add_argument('table')
    s.add_argument('--archs', nargs='*', default=None, metavar='NAME',
                   help='released variants (default: all of the family)')
    s.add_argument('--random', type=int, default=20, help='random archs of the table\'s space')
    s.add_argument('--seed', type=int, default=0)
    s.add_argument('--runs', type=int, default=10)
    s.add_argument('--warmup', type=int, default=3)
    s.add_argument('--paired', action='store_true',
                   help='time the entries again before each round of whole runs and predict '
                   'from those: the table\'s model checked without the drift of the machine '
                   'since the build (the table\'s own predictions are kept as table_ms). Every '
                   'entry stays compiled meanwhile: 254 onnxruntime entries at 800x1344 need '
                   'over 24 GB')
    s.add_argument('--entry-runs', type=int, default=3,
                   help='with --paired: timed runs of each entry per round (median)')
    s.add_argument('--out')
    s.add_argument('--glibc-default', dest='keep_freed_memory', action='store_false',
                   help='measure with glibc\'s default heap (refused for a table built '
                   'otherwise)')
    _denormal_option(s)
    _busy_option(s)
    s.set_defaults(func=cmd_study)

    w = sub.add_parser('sweep', help='whole backbones at several input sizes')
    w.add_argument('--models', nargs='+', default=['l1', 'l3', 'l7', 'v2s0', 'v2s1', 'v2s2',
                                                   'v2l', 'r50'])
    w.add_argument('--sizes', nargs='+', type=_hw, metavar='HxW',
                   default=[_hw(s) for s in ('224x224', '512x512', '800x800', '800x1344',
                                             '1344x1344')])
    w.add_argument('--runtime', choices=RUNTIMES, default='torch')
    w.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    w.add_argument('--threads', type=int, default=2)
    w.add_argument('--runs', type=int, default=5)
    w.add_argument('--warmup', type=int, default=2)
    w.add_argument('--out', required=True)
    w.add_argument('--glibc-default', dest='keep_freed_memory', action='store_false')
    _denormal_option(w)
    _busy_option(w)
    w.set_defaults(func=cmd_sweep)

    f = sub.add_parser('floor', help='a lower bound of deployed backbones\' time here')
    f.add_argument('--models', nargs='+', default=['l1', 'v2s2'],
                   help='l1 l3 l7 v2s0 v2s1 v2s2 v2l')
    f.add_argument('--size', nargs=2, type=int, default=[800, 1344], metavar=('H', 'W'))
    f.add_argument('--threads', type=int, default=2)
    f.set_defaults(func=cmd_floor)

    o = sub.add_parser('observe', help='the paper\'s four latency observations, timed here '
                       '(controlled pairs of modules at dense-prediction map sizes)')
    o.add_argument('--size', nargs=2, type=int, metavar=('H', 'W'), default=[800, 1344])
    o.add_argument('--runtime', choices=RUNTIMES, default='torch')
    o.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    o.add_argument('--threads', type=int, default=2)
    o.add_argument('--runs', type=int, default=10)
    o.add_argument('--warmup', type=int, default=3)
    o.add_argument('--only', nargs='+', choices=['stem', 'reshape', 'mixer', 'norm', 'act'],
                   help='only these observations')
    o.add_argument('--out', help='write the result (JSON) for report')
    o.add_argument('--no-progress', action='store_true')
    o.add_argument('--glibc-default', dest='keep_freed_memory', action='store_false')
    _denormal_option(o)
    _busy_option(o)
    o.set_defaults(func=cmd_observe)

    r = sub.add_parser('report', help='figures and tables for docs/latency.md')
    r.add_argument('inputs', nargs='+', help='tables, study and sweep files')
    r.add_argument('--out-dir', default='docs/latency')
    r.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    if args.command == 'study' and args.archs is None:
        args.archs = sorted(_released_names(args.table))
    return args


def _denormal_option(parser):
    parser.add_argument('--keep-denormals', dest='flush_denormals', action='store_false',
                        help='time with IEEE denormals (the default flushes them to zero, as '
                        'docs/latency.md tells a deployment: mmef.runtimes.flush_denormals)')


def _busy_option(parser):
    from mmef.runtimes import BUSY_SPREAD
    parser.add_argument('--busy-spread', type=float, default=BUSY_SPREAD,
                        help='the machine counts as busy when the runs of one entry or network '
                        'spread beyond this ratio of quartiles (q3 / q1): timed again, then the '
                        'tool stops with that reason; 0 checks nothing')


def _released_names(table_path):
    from mmef.latency import LatencyTable
    from mmef.models import EfficientFormer, EfficientFormerV2
    family = LatencyTable.load(table_path).family
    return (EfficientFormer if family == 'v1' else EfficientFormerV2).arch_settings


def main(argv=None):
    args = parse_args(argv)
    if getattr(args, 'keep_freed_memory', False):
        from mmef.runtimes import keep_freed_memory
        keep_freed_memory()
    if getattr(args, 'flush_denormals', False):
        from mmef.runtimes import flush_denormals
        flush_denormals()
    from mmef.latency import MissingEntries, TableMismatch
    from mmef.runtimes import BusyMachine, RuntimeUnavailable
    try:
        args.func(args)
    except (TableMismatch, MissingEntries, RuntimeUnavailable, BusyMachine, FileExistsError,
            ValueError) as e:  # what the tool and mmef.latency refuse, with the reason
        raise SystemExit(f'error: {e}')
    except KeyboardInterrupt as e:  # a build says what it kept and how to resume
        print(f'\n{e or "interrupted"}', file=sys.stderr)
        raise SystemExit(130)


if __name__ == '__main__':
    main()
