"""The latency report: figures (PNG) and markdown tables made from the files that
``tools/latency_table.py`` writes (tables, prediction studies, input-size sweeps), never drawn
by hand.

* where the time goes: per stage and per block kind of each released variant, from each table;
* how latency grows with the input size, per variant, from a sweep;
* accuracy against latency: the papers' reported COCO box AP / ADE20K mIoU (configs/metafile.yml;
  ResNet-50's from the EfficientFormer paper's Table 2) against latency measured here;
* predicted against measured latency, from the studies;
* the paper's four latency observations, from ``observe`` files (one per runtime).
"""
import json
import os
import os.path as osp

from .table import LatencyTable

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# Reported by the EfficientFormer paper (Table 2), for the ResNet rows of the sweep
RESNET_REPORTED = {'r50': {'box AP': 38.0, 'mIoU': 36.7}, 'r18': {'box AP': 34.0, 'mIoU': 32.9}}
KIND_NAMES = {'stem': 'stem', 'down': 'downsampling', 'adown': 'downsampling (attention)',
              'mb4d': 'MB4D', 'mb4df': 'MB4D', 'flatten': 'flatten',
              'mb3d': 'MB3D (attention)', 'mb3df': 'MB3D (attention)', 'norm': 'output norm',
              'normt': 'output norm', 'ffn': 'FFN', 'ffnf': 'FFN',
              'attn': 'AttnFFN (attention)', 'attnf': 'AttnFFN (attention)',
              'out': 'output copy'}


def reported_accuracy(metafile=None):
    """{model: {'box AP': x, 'mIoU': y}} of the released dense models, from the metafile
    (model names as the sweep uses them: l1, v2s2, ...)."""
    import yaml
    with open(metafile or osp.join(ROOT, 'configs', 'metafile.yml')) as f:
        models = yaml.safe_load(f)['Models']
    out = {}
    for m in models:
        name = m['Name']
        if 'coco' not in name and 'ade20k' not in name:
            continue
        variant = name.split('efficientformer')[1].split('_')[0]  # '-l1' or 'v2-s2'
        key = variant.replace('-', '') if variant.startswith('v2') else variant[1:]
        for result in m['Results']:
            for metric, value in result['Metrics'].items():
                if metric in ('box AP', 'mIoU'):
                    out.setdefault(key, {})[metric] = value
    return out


def spearman_text(summary):
    """The rank correlation of a study summary as text ('n/a' below 3 archs: undefined for one
    arch, trivially +-1 for two)."""
    if summary['n'] < 3 or summary['spearman'] != summary['spearman']:
        return f"n/a ({summary['n']} arch{'s' if summary['n'] > 1 else ''})"
    return f"{summary['spearman']:.3f}"


def _save(fig, plt, out_dir, name, lines, written):
    """Writes ``fig`` as ``out_dir/name``, links it in the markdown ``lines``."""
    fig.tight_layout()
    png = osp.join(out_dir, name)
    fig.savefig(png, dpi=110, bbox_inches='tight')  # long axis labels are not cut
    plt.close(fig)
    written.append(png)
    lines.append(f'\n![{name[:-4]}]({name})\n')


def _load_inputs(paths):
    tables, studies, sweeps, observed = [], [], [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if 'entries' in data:
            tables.append((path, LatencyTable.load(path)))
        elif data.get('kind') == 'study':
            studies.append((path, data))
        elif data.get('kind') == 'sweep':
            sweeps.append((path, data))
        elif data.get('kind') == 'observe':
            observed.append((path, data))
        else:
            raise ValueError(f'{path}: not a latency table, study, sweep or observe file')
    return tables, studies, sweeps, observed


def _size(meta_or_row):
    h, w = meta_or_row['input_size']
    return f'{h}x{w}'


def _where(meta):
    return (f"{meta.get('gpu') or meta['cpu']['model']}, {meta['runtime']} "
            f"{meta['runtime_version']}, {meta['threads']} threads")


def breakdown_section(tables, out_dir, plt):
    lines, written = [], []
    for path, table in tables:
        from ..models import EfficientFormer, EfficientFormerV2
        cls = EfficientFormer if table.family == 'v1' else EfficientFormerV2
        names = [n for n in cls.arch_settings if _covers(table, n)]
        if not names:
            continue
        m = table.meta
        tag = f"{table.family}_{_size(m)}_{m['runtime']}"
        parts = {n: table.breakdown(n) for n in names}
        kinds = []
        for p in parts.values():
            for k in p['per_kind']:
                if KIND_NAMES[k] not in kinds:
                    kinds.append(KIND_NAMES[k])
        lines.append(f"\n### Where the time goes: {table.family.upper()} at {_size(m)} "
                     f"({_where(m)})\n\nPredicted from `{osp.basename(path)}`; share of the "
                     "backbone's predicted latency.\n")
        lines.append('| variant | predicted ms | ' + ' | '.join(f'stage {i}' for i in range(4))
                     + ' | ' + ' | '.join(kinds) + ' |')
        lines.append('|---' * (2 + 4 + len(kinds)) + '|')
        for n, p in parts.items():
            total = p['total']
            per_kind = {}
            for k, v in p['per_kind'].items():
                per_kind[KIND_NAMES[k]] = per_kind.get(KIND_NAMES[k], 0) + v
            lines.append(f'| {n} | {total:.1f} | ' + ' | '.join(
                f"{100 * p['per_stage'].get(i, 0) / total:.0f} %" for i in range(4)) + ' | '
                + ' | '.join(f'{100 * per_kind.get(k, 0) / total:.0f} %' for k in kinds) + ' |')
        fig, ax = plt.subplots(figsize=(7, 3.2))
        bottom = [0.0] * len(names)
        for k in kinds:
            vals = [sum(v for kk, v in parts[n]['per_kind'].items() if KIND_NAMES[kk] == k)
                    for n in names]
            ax.barh(names, vals, left=bottom, label=k)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel('predicted latency (ms)')
        ax.set_title(f'{table.family.upper()} at {_size(m)}: {_where(m)}', fontsize=8)
        ax.legend(fontsize=7, loc='lower right')
        _save(fig, plt, out_dir, f'breakdown_{tag}.png', lines, written)
    return lines, written


def _covers(table, name):
    try:
        table.used(name)
        return True
    except KeyError:
        return False


def study_section(studies, out_dir, plt):
    lines, written = [], []
    if not studies:
        return lines, written
    lines.append('\n### Predicted against measured whole deployed backbones\n')
    lines.append('| family | input | runtime | threads | predictions | archs | median abs error '
                 '| worst abs error | Spearman |')
    lines.append('|---|---|---|---|---|---|---|---|---|')
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = float('inf'), 0
    markers = 'ox^vsD<>P*'
    for i, (path, s) in enumerate(studies):
        m, summ = s['meta'], s['summary']
        how = 'paired (entries re-timed each round)' if s.get('paired') else 'the table as built'
        lines.append(f"| {m['family']} | {_size(m)} | {m['runtime']} {m['runtime_version']} | "
                     f"{m['threads']} | {how} | {summ['n']} | "
                     f"{100 * summ['median_abs_error']:.1f} % | "
                     f"{100 * summ['worst_abs_error']:.1f} % | {spearman_text(summ)} |")
        xs = [r['measured_ms'] for r in s['rows']]
        ys = [r['predicted_ms'] for r in s['rows']]
        lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        # one colour and marker per series (tab20 has 20 colours; markers tell 10 apart)
        ax.scatter(xs, ys, s=12, marker=markers[i % len(markers)], color=plt.cm.tab20(i % 20),
                   label=f"{m['family']} {_size(m)} {m['runtime']}"
                   f"{' paired' if s.get('paired') else ''}")
    ax.plot([lo, hi], [lo, hi], 'k-', lw=0.8)
    ax.plot([lo, hi], [lo * 1.1, hi * 1.1], 'k:', lw=0.6)
    ax.plot([lo, hi], [lo * 0.9, hi * 0.9], 'k:', lw=0.6)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('measured (ms)')
    ax.set_ylabel('predicted from the table (ms)')
    ax.set_title(f"{studies[0][1]['meta']['cpu']['model']}, {studies[0][1]['meta']['threads']} "
                 'threads (dotted: +-10 %)', fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, plt, out_dir, 'prediction.png', lines, written)
    return lines, written


def sweep_section(sweeps, out_dir, plt):
    lines, written = [], []
    for path, s in sweeps:
        meta = s['meta']
        models = list(dict.fromkeys(r['model'] for r in s['rows']))
        sizes = list(dict.fromkeys(_size(r) for r in s['rows']))
        ms = {(r['model'], _size(r)): r['ms'] for r in s['rows']}
        lines.append(f"\n### Latency against input size ({_where(meta)})\n\nMeasured whole "
                     f"deployed backbones (`{osp.basename(path)}`), median of {s['runs']} runs, "
                     'ms.\n')
        lines.append('| model | ' + ' | '.join(sizes) + ' |')
        lines.append('|---' * (1 + len(sizes)) + '|')
        for model in models:
            lines.append(f'| {model} | ' + ' | '.join(
                f"{ms[(model, sz)]:.1f}" if (model, sz) in ms else '-' for sz in sizes) + ' |')
        fig, ax = plt.subplots(figsize=(6, 4))
        pixels = {sz: int(sz.split('x')[0]) * int(sz.split('x')[1]) for sz in sizes}
        for model in models:
            pts = sorted((pixels[sz], ms[(model, sz)]) for sz in sizes if (model, sz) in ms)
            ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], marker='o', ms=3, label=model,
                    ls='--' if model.startswith('r') else '-')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xticks([pixels[sz] / 1e6 for sz in sizes], sizes, fontsize=7, rotation=30)
        ax.minorticks_off()
        ax.set_xlabel('input size (HxW; log of the pixels)')
        ax.set_ylabel('measured latency (ms)')
        ax.set_title(_where(meta), fontsize=8)
        ax.legend(fontsize=7, ncol=2)
        _save(fig, plt, out_dir, f"sweep_{meta['runtime']}.png", lines, written)
        acc_lines, acc_png = accuracy_section(s, ms, out_dir, plt)
        lines += acc_lines
        written += acc_png
    return lines, written


def accuracy_section(sweep, ms, out_dir, plt):
    reported = dict(reported_accuracy())
    reported.update(RESNET_REPORTED)
    meta = sweep['meta']
    panels = [('box AP', '800x1344', 'COCO box AP (Mask R-CNN 1x)'),
              ('mIoU', '512x512', 'ADE20K mIoU (Semantic FPN 40k)')]
    panels = [p for p in panels if any(k[1] == p[1] for k in ms)]
    if not panels:
        return [], []
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    lines = ['\n### Reported accuracy against latency measured here\n',
             'Accuracies are the papers\' (EfficientFormer Table 2, EfficientFormerV2, '
             'configs/metafile.yml); latencies are the whole deployed backbones measured '
             f'here ({_where(meta)}).\n',
             '| model | metric | reported | input | measured backbone ms |',
             '|---|---|---|---|---|']
    for ax, (metric, size, title) in zip(axes[0], panels):
        for model, accs in reported.items():
            if metric in accs and (model, size) in ms:
                x, y = ms[(model, size)], accs[metric]
                ax.scatter([x], [y], s=16, marker='s' if model.startswith('r') else 'o')
                ax.annotate(model, (x, y), fontsize=7, xytext=(3, 3), textcoords='offset points')
                lines.append(f'| {model} | {metric} | {y} | {size} | {x:.1f} |')
        ax.set_xlabel(f'backbone latency at {size}, measured here (ms)')
        ax.set_ylabel(f'{title}, reported by the papers')
        ax.set_title(_where(meta), fontsize=8)
    written = []
    _save(fig, plt, out_dir, f"accuracy_{meta['runtime']}.png", lines, written)
    return lines, written


def observe_section(observed, out_dir, plt):
    """The paper's four observations: a summary across runtimes, and per runtime the claim,
    the medians and ratios, the verdict, and a figure of the ratios."""
    lines, written = [], []
    if not observed:
        return lines, written
    lines.append('\n### The paper\'s four latency observations, redone\n')
    cols = [f"{d['meta']['runtime']} {_size(d)}" for _, d in observed]
    lines.append('| observation | the paper\'s claim (iPhone 12) | ' + ' | '.join(cols) + ' |')
    lines.append('|---' * (2 + len(cols)) + '|')
    first = observed[0][1]['observations']
    for i, obs in enumerate(first):
        verdicts = []
        for _, d in observed:
            match = [o for o in d['observations'] if o['key'] == obs['key']]
            verdicts.append('-' if not match else 'holds' if match[0]['holds'] else 'does not')
        lines.append(f"| {obs['number']} ({obs['key']}) | {obs['claim']} | "
                     + ' | '.join(verdicts) + ' |')
    for path, d in observed:
        meta = d['meta']
        lines.append(f"\n#### {meta['runtime']}, {_size(d)} ({_where(meta)})\n\n"
                     f"`{osp.basename(path)}`: medians of {d['runs']} runs after {d['warmup']}, "
                     'each group timed round-robin; ratio to the group\'s first row.\n')
        lines.append('| observation | module | median ms | ratio | holds? |')
        lines.append('|---|---|---|---|---|')
        for obs in d['observations']:
            for j, r in enumerate(obs['rows']):
                verdict = (f"**{'yes' if obs['holds'] else 'no'}** ({obs['rule']})"
                           if j == 0 else '')
                lines.append(f"| {obs['number']} ({obs['key']}) | {r['label']} | "
                             f"{r['ms']:.2f} | {r['ratio']:.2f} | {verdict} |")
        n = len(d['observations'])
        fig, axes = plt.subplots(n, 1, figsize=(7, 1.1 + 0.42 * sum(
            len(o['rows']) for o in d['observations'])), squeeze=False,
            gridspec_kw=dict(height_ratios=[len(o['rows']) for o in d['observations']]))
        for ax, obs in zip(axes[:, 0], d['observations']):
            labels = [r['label'] for r in obs['rows']][::-1]
            ratios = [r['ratio'] for r in obs['rows']][::-1]
            ax.barh(range(len(labels)), ratios, color=['C0' if i == len(labels) - 1 else 'C1'
                                                       for i in range(len(labels))])
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.axvline(1.0, color='k', lw=0.6)
            ax.set_title(f"{obs['number']} ({obs['key']}): "
                         f"{'holds' if obs['holds'] else 'does not hold'} here", fontsize=8)
            ax.tick_params(axis='x', labelsize=7)
        axes[-1, 0].set_xlabel('time relative to the first module of its group', fontsize=8)
        fig.suptitle(f"{meta['runtime']}, input {_size(d)}, {_where(meta)}", fontsize=8)
        _save(fig, plt, out_dir, f"observe_{meta['runtime']}_{_size(d)}.png", lines, written)
    return lines, written


def write_report(paths, out_dir):
    """Writes the figures and ``report.md`` (the tables) into ``out_dir``; returns the paths."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    tables, studies, sweeps, observed = _load_inputs(paths)
    lines = ['# Latency report (generated by `tools/latency_table.py report`)\n',
             'Inputs: ' + ', '.join(f'`{osp.basename(p)}`' for p in paths) + '\n']
    written = []
    for section in (breakdown_section(tables, out_dir, plt), study_section(studies, out_dir, plt),
                    sweep_section(sweeps, out_dir, plt), observe_section(observed, out_dir, plt)):
        lines += section[0]
        written += section[1]
    md = osp.join(out_dir, 'report.md')
    with open(md, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return written + [md]
