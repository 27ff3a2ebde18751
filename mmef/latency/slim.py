"""Latency-driven slimming of a supernet with a latency table: the EfficientFormer paper's search
(section 4.2) for :class:`~mmef.models.EfficientFormerSupernet` (V1), and the same loop over
the V2 paper's fine-grained space for :class:`~mmef.models.EfficientFormerV2Supernet`.

From the whole supernet down, one action per step. V1 (importance-guided, as in the paper):

1. ``identity``: the least important MetaPath still computing a block becomes the identity
   (every stage keeps at least one block);
2. ``mb3d``: the first MB3D block becomes an MB4D (the MB3D blocks stay the end of stage 4);
3. ``narrow``: the least important stage (its MetaPaths' importances summed) loses 16 channels
   (not below the table's smallest width).

V2 (every stage tried, the supernet's trained range respected: ``min_widths``, ``min_depths``,
``min_attn_blocks``):

1. ``ratio``: in each stage, the block nearest the stage's middle whose MLP ratio can go lower
   (4 -> 3) does;
2. ``attention``: one attention block fewer in stages 3 and 4 (the stages keep their depth: one
   more of the supernet's first blocks is kept as an FFN block);
3. ``block``: in each stage, the last FFN block (the one before the attention blocks) goes;
4. ``narrow``: each stage 8 channels narrower.

Each candidate's latency comes from the table; its score drop is evaluated by the caller's
``evaluate(arch)`` (higher is better, on validation data with the supernet's weights); the
candidate with the smallest drop per unit of cost saved is taken, until the predicted latency is
at most the target. The cost is the predicted latency (``cost='latency'``, the default), or the
V2 paper's combination of latency and size (``cost='mes'``): its Mobile Efficiency Score
``MES = 100 * prod_i (M_i / U_i) ** -alpha_i`` over latency and parameter count, so that a
step saves ``log MES_after - log MES_before = alpha_ms * log(ms / ms') + alpha_params *
log(params / params')`` (the units ``U_i`` cancel); ``mes_weights=(alpha_ms, alpha_params)``
defaults to (0.5, 0.5), latency and size weighted equally (mmef's choice: the paper names the
form, the weights are yours to set).
"""
import json
import math

from .blocks import arch_entries

ACTIONS = ('identity', 'mb3d', 'narrow')
V2_ACTIONS = ('ratio', 'attention', 'block', 'narrow')
COSTS = ('latency', 'mes')
FAMILIES = {'EfficientFormerSupernet': 'v1', 'EfficientFormerV2Supernet': 'v2'}
DESCRIPTIONS = {  # of the path figure's step letters
    'v1': 'i = a block to identity, m = an MB3D to MB4D, n = a stage 16 channels narrower',
    'v2': 'r = a lower MLP ratio, a = one attention block fewer, b = one block fewer,\n'
          'n = a stage 8 channels narrower',
}


def family_of(supernet):
    """'v1' or 'v2': the latency-table family of a supernet."""
    name = type(supernet).__name__
    if name not in FAMILIES:
        raise TypeError(f'slimming needs an EfficientFormerSupernet or EfficientFormerV2Supernet, '
                        f'got {name}')
    return FAMILIES[name]


def _blocks(arch):
    return [list(stage) for stage in arch['blocks']]


def _arch(widths, blocks):
    return dict(widths=tuple(widths), blocks=tuple(tuple(s) for s in blocks))


def candidates(supernet, arch, min_widths, step=16):
    """{label: (description, next arch)} of the actions possible from ``arch`` (V1: the labels
    are the actions; V2: ``action:stage``, e.g. ``narrow:3``, and ``attention``)."""
    if family_of(supernet) == 'v2':
        return _v2_candidates(supernet, arch, min_widths)
    importance = supernet.importance()
    blocks, out = _blocks(arch), {}
    kept = [(importance[i][j], i, j) for i, stage in enumerate(blocks)
            for j, choice in enumerate(stage)
            if choice != 'identity' and sum(c != 'identity' for c in stage) > 1]
    if kept:
        _, i, j = min(kept)
        new = _blocks(arch)
        new[i][j] = 'identity'
        out['identity'] = (f'block {j + 1} of stage {i + 1} ({blocks[i][j]}) -> identity',
                           _arch(arch['widths'], new))
    for j, choice in enumerate(blocks[-1]):
        if choice == 'mb3d':
            new = _blocks(arch)
            new[-1][j] = 'mb4d'
            out['mb3d'] = (f'block {j + 1} of stage 4: mb3d -> mb4d',
                           _arch(arch['widths'], new))
            break
    narrowable = [(sum(importance[i][j] for j, c in enumerate(stage) if c != 'identity'), i)
                  for i, stage in enumerate(blocks) if arch['widths'][i] - step >= min_widths[i]]
    if narrowable:
        _, i = min(narrowable)
        widths = list(arch['widths'])
        widths[i] -= step
        out['narrow'] = (f'stage {i + 1}: {widths[i] + step} -> {widths[i]} channels',
                         _arch(widths, blocks))
    return out


def _v2_arch(supernet, widths, depths, n, ratios):
    """A checked V2 sub-network; each ratio at most what its (possibly new) source block
    offers."""
    sources = supernet.source_blocks(depths, n)
    ratios = [tuple(min(r, max(supernet.ratio_choices(i, j))) for r, j in zip(stage, source))
              for i, (stage, source) in enumerate(zip(ratios, sources))]
    return supernet.check_subnet(dict(widths=tuple(widths), depths=tuple(depths),
                                      num_attn_blocks=n, mlp_ratios=tuple(ratios)))


def _v2_candidates(supernet, arch, min_widths):
    w, d, n = list(arch['widths']), list(arch['depths']), arch['num_attn_blocks']
    ratios = [list(r) for r in arch['mlp_ratios']]
    sources = supernet.source_blocks(d, n)
    out = {}
    for i in range(4):
        lower = {k: [c for c in supernet.ratio_choices(i, j) if c < ratios[i][k]]
                 for k, j in enumerate(sources[i])}
        lowerable = [k for k, choices in lower.items() if choices]
        if lowerable:
            k = min(lowerable, key=lambda k: (abs(k - (d[i] - 1) / 2), k))
            new = [list(r) for r in ratios]
            new[i][k] = max(lower[k])
            out[f'ratio:{i + 1}'] = (
                f'block {k + 1} of stage {i + 1}: MLP ratio {ratios[i][k]} -> {new[i][k]}',
                _v2_arch(supernet, w, d, n, new))
    if n - 1 >= supernet.min_attn_blocks:
        out['attention'] = (f'stages 3 and 4: {n} -> {n - 1} attention blocks',
                            _v2_arch(supernet, w, d, n - 1, ratios))
    for i in range(4):
        n_i = n if i >= 2 else 0
        if d[i] - 1 >= max(supernet.min_depths[i], n_i, 1) and d[i] - n_i >= 1:
            depths, new = list(d), [list(r) for r in ratios]
            depths[i] -= 1
            del new[i][d[i] - n_i - 1]  # the last FFN block
            out[f'block:{i + 1}'] = (f'stage {i + 1}: {d[i]} -> {d[i] - 1} blocks',
                                     _v2_arch(supernet, w, depths, n, new))
    for i in range(4):
        if w[i] - 8 >= min_widths[i]:
            widths = list(w)
            widths[i] -= 8
            out[f'narrow:{i + 1}'] = (f'stage {i + 1}: {w[i]} -> {widths[i]} channels',
                                      _v2_arch(supernet, widths, d, n, ratios))
    order = {a: k for k, a in enumerate(V2_ACTIONS)}
    return dict(sorted(out.items(), key=lambda item: order[item[0].split(':')[0]]))


def smallest_arch(supernet, min_widths):
    """The cheapest arch the actions reach: V1 the smallest widths and one MB4D per stage; V2
    the supernet's smallest trained sub-network at these widths."""
    if family_of(supernet) == 'v2':
        return supernet.smallest_arch(widths=min_widths)
    blocks = [['mb4d'] + ['identity'] * (len(stage.blocks) - 1) for stage in supernet.stages]
    return _arch(min_widths, blocks)


def slimming_min_widths(supernet, space):
    """The narrowest widths slimming goes to: the table's, and for V2 the supernet's trained
    range."""
    if family_of(supernet) == 'v2':
        return tuple(max(lo, m, 8) for lo, m in zip(space.min_widths, supernet.min_widths))
    return tuple(max(lo, 16) for lo in space.min_widths)


def backbone_params(family, arch):
    """Parameter count of the backbone ``arch`` (built on the meta device: no memory)."""
    import torch

    from ..models import EfficientFormer, EfficientFormerV2
    with torch.device('meta'):
        module = (EfficientFormerV2 if family == 'v2' else EfficientFormer)(arch)
    return sum(p.numel() for p in module.parameters())


def slim(supernet, table, target_ms, evaluate, out_indices=(0, 1, 2, 3), start=None,
         progress=None, tolerance=0.0, cost='latency', mes_weights=(0.5, 0.5)):
    """Slims ``supernet`` to ``target_ms`` on ``table`` (see the module docstring).

    Args:
        supernet: an :class:`~mmef.models.EfficientFormerSupernet` or
            :class:`~mmef.models.EfficientFormerV2Supernet`.
        table: a :class:`~mmef.latency.LatencyTable` of the supernet's family, covering its
            widths.
        target_ms (float): latency budget of the deployed backbone, as the table predicts it.
        evaluate (callable): ``evaluate(arch) -> float``, higher is better.
        out_indices: the backbone outputs the task uses (their norms are timed parts).
        start (dict, optional): the arch to start from; default the whole supernet.
        progress (callable, optional): called with each step's record.
        tolerance (float): slimming stops at ``target_ms * (1 + tolerance)``: a prediction is
            no closer to a measurement than the table's own error, and one more step to cover
            a miss smaller than that can cost much of the score.
        cost (str): 'latency' (the score drop per millisecond saved) or 'mes' (per unit of the
            V2 paper's log Mobile Efficiency Score gained; ``mes_weights`` are its exponents
            for latency and parameter count).

    Returns:
        list[dict]: the steps, each with ``step``, ``action``, ``what``, ``arch``,
        ``backbone_arch``, ``latency_ms``, ``params_m``, ``score``, ``entries`` ({key: count})
        and, from step 1, ``gain_ms``, ``drop``, ``gain`` (of the cost) and the ``tried``
        candidates (latency and score each).
    """
    family = family_of(supernet)
    if table.family != family:
        name = 'EfficientFormerV2' if family == 'v2' else 'EfficientFormer (V1)'
        raise ValueError(f'the supernet is {name}; the table is a {table.family} table: build '
                         f'a {family} table (tools/latency_table.py build --family {family})')
    if cost not in COSTS:
        raise ValueError(f'cost must be one of {COSTS}, got {cost!r}')
    if cost == 'mes' and not (len(mes_weights) == 2 and all(a >= 0 for a in mes_weights)
                              and sum(mes_weights) > 0):
        raise ValueError(f'mes_weights are two exponents >= 0 (latency, parameters), not both '
                         f'0; got {mes_weights!r}')
    space = table.space
    min_widths = slimming_min_widths(supernet, space)
    arch = supernet.check_subnet(start or supernet.largest_arch())
    too_wide = [i for i in range(4) if arch['widths'][i] > space.max_widths[i]]
    if too_wide:
        raise ValueError(f'the supernet is wider than the table at stages '
                         f'{[i + 1 for i in too_wide]} (widths {list(arch["widths"])}, table up to '
                         f'{list(space.max_widths)}): build a table that covers it '
                         '(tools/latency_table.py build --max-widths)')

    def latency(a):
        return table.predict(supernet.backbone_arch(a), out_indices)

    def params(a):
        return backbone_params(family, supernet.backbone_arch(a)) / 1e6

    def gain(ms, p, new_ms, new_p):
        if cost == 'latency':
            return ms - new_ms
        return mes_weights[0] * math.log(ms / new_ms) + mes_weights[1] * math.log(p / new_p)

    floor = latency(smallest_arch(supernet, min_widths))
    if target_ms < floor:
        what = 'one MB4D per stage' if family == 'v1' else 'the smallest trained sub-network'
        raise ValueError(f'target {target_ms:.2f} ms is below the smallest latency slimming '
                         f'can reach on this table ({floor:.2f} ms: {what}, widths '
                         f'{list(min_widths)}); raise the target')

    def record(step, action, what, a, ms, p, score, **extra):
        backbone = supernet.backbone_arch(a)
        entries = arch_entries(family, backbone, out_indices)
        rec = dict(step=step, action=action, what=what, arch=_listed(a),
                   backbone_arch=_listed(backbone), latency_ms=ms, params_m=p, score=score,
                   entries={e.key: n for e, n in sorted(entries.items())}, **extra)
        if progress is not None:
            progress(rec)
        return rec

    ms, p, score = latency(arch), params(arch), float(evaluate(arch))
    steps = [record(0, 'start', 'the whole supernet' if start is None else 'given arch', arch,
                    ms, p, score)]
    while ms > target_ms * (1 + tolerance):
        tried = {}
        for label, (what, new) in candidates(supernet, arch, min_widths).items():
            new_ms = latency(new)
            if new_ms >= ms:
                continue  # saves nothing
            new_p = params(new)
            new_score = float(evaluate(new))
            g = gain(ms, p, new_ms, new_p)
            tried[label] = dict(what=what, arch=new, latency_ms=new_ms, params_m=new_p,
                                score=new_score, gain=g, per_cost=(score - new_score) / g)
        if not tried:
            raise RuntimeError(f'no action lowers the latency below {ms:.2f} ms (target '
                               f'{target_ms:.2f} ms)')
        order = list(tried)  # ties: the candidates' order
        label = min(tried, key=lambda a: (tried[a]['per_cost'], order.index(a)))
        best = tried[label]
        steps.append(record(len(steps), label.split(':')[0], best['what'], best['arch'],
                            best['latency_ms'], best['params_m'], best['score'],
                            gain_ms=ms - best['latency_ms'], gain=best['gain'],
                            drop=score - best['score'],
                            tried={a: dict(latency_ms=t['latency_ms'], params_m=t['params_m'],
                                           score=t['score']) for a, t in tried.items()}))
        arch, ms, p, score = best['arch'], best['latency_ms'], best['params_m'], best['score']
    return steps


def _listed(arch):
    """An arch dict as JSON has it (tuples become lists)."""
    return json.loads(json.dumps(arch))


# --------------------------------------------------------------------------- on a real task
def annotations_first(pipeline):
    """A copy of a test pipeline with LoadAnnotations moved right after image loading, so that
    resizing scales the annotations with the image (mmdet's and mmseg's test pipelines load them
    after resizing, at the original scale, for the metrics)."""
    steps = [dict(step) for step in pipeline]
    loads = [s for s in steps if str(s.get('type', '')).endswith('LoadAnnotations')]
    rest = [s for s in steps if s not in loads]
    at = next((i + 1 for i, s in enumerate(rest)
               if str(s.get('type', '')).startswith('LoadImage')), 0)
    return rest[:at] + loads + rest[at:]


def task_input_size(cfg):
    """(H, W) of the backbone input a config's test pipeline gives: its ``crop_size`` when it
    has one (mmseg), else its Resize scale with the long side padded to 32 (mmdet's 1333x800
    gives 800x1344)."""
    if cfg.get('crop_size'):
        return tuple(int(v) for v in cfg.crop_size)
    for step in cfg.test_dataloader.dataset.pipeline:
        if str(step.get('type', '')).endswith('Resize') and step.get('scale'):
            long, short = max(step['scale']), min(step['scale'])
            return (int(short), int(-(-long // 32) * 32))
    raise ValueError('cannot tell the input size from the config (no crop_size, no Resize with '
                     'a scale in the test pipeline): pass --input-size H W')


def loss_evaluator(model, batches, seed=0, calib_batches=None):
    """``evaluate(arch)`` for :func:`slim`: minus the model's mean total loss on ``batches``
    (data batches with annotations) with the supernet fixed to ``arch``, in eval mode, with the
    random state reset (samplers of two-stage heads draw at random) so that every arch sees the
    same draws. With ``calib_batches`` (training batches; V2 supernets) the BatchNorm statistics
    are recalibrated for ``arch`` first (:func:`mmef.sandwich.recalibrated`), else they are the
    supernet's."""
    import contextlib

    import torch

    from ..sandwich import recalibrated
    backbone = model.backbone

    def evaluate(arch):
        if calib_batches:
            context = recalibrated(model, arch, calib_batches)
        else:
            backbone.fix(arch, full_width_outputs=True)  # the supernet's neck takes them
            model.eval()
            context = contextlib.nullcontext()
        torch.manual_seed(seed)
        total = 0.
        try:
            with context, torch.no_grad():
                for batch in batches:
                    data = model.data_preprocessor(batch, False)
                    losses = model.loss(data['inputs'], data['data_samples'])
                    total += float(sum(v.sum() for k, v in losses.items() if 'loss' in k
                                       and torch.is_tensor(v)))
        finally:
            backbone.fix(None)
        return -total / len(batches)

    return evaluate


def subnet_state_dict(model, subnet_model, arch):
    """State dict of ``subnet_model`` (the model of the sub-network's config) from the supernet
    ``model``: the backbone extracted (:meth:`EfficientFormerSupernet.extract`), every other
    tensor the leading slice of the supernet model's (the neck's input channels cut to the
    sub-network's widths)."""
    from ..models.supernet import leading_slice
    backbone = model.backbone.extract(arch).state_dict()
    own = model.state_dict()
    state = {}
    for key, value in subnet_model.state_dict().items():
        if key.startswith('backbone.'):
            state[key] = backbone[key[len('backbone.'):]]
        else:
            state[key] = leading_slice(own[key], value.shape).clone()
    return state


PLAIN_LOOPS = {'SandwichIterBasedTrainLoop': 'IterBasedTrainLoop',
               'SandwichEpochBasedTrainLoop': 'EpochBasedTrainLoop'}


def subnet_config(supernet_config, backbone, arch, checkpoint, custom_hooks, neck=None,
                  backbone_type='EfficientFormer', train_cfg=None):
    """Text of a config that inherits the supernet's and trains the found sub-network:
    ``backbone_type(arch=...)`` with ``backbone`` (the supernet's backbone settings that carry
    over) initialised from ``checkpoint``, the neck's ``in_channels`` (when ``neck`` has them)
    the sub-network's output widths, the temperature hook removed and a sandwich training loop
    (``train_cfg``) replaced by mmengine's plain one."""
    keep = {k: v for k, v in backbone.items()
            if k in ('in_channels', 'out_indices', 'frozen_stages', 'norm_eval',
                     'drop_path_rate', 'layer_scale_init_value', 'attn_bias_mode',
                     'attn_bias_resolution', 'with_cp')}
    hooks = [h for h in custom_hooks or [] if h.get('type') != 'SupernetTemperatureHook']
    settings = ''.join(f'        {k}={v!r},\n' for k, v in keep.items())
    necks = ''
    if neck and 'in_channels' in neck:
        indices = backbone.get('out_indices', (0, 1, 2, 3))
        necks = f',\n    neck=dict(in_channels={[arch["widths"][i] for i in indices]!r})'
    loop = ''
    if train_cfg and train_cfg.get('type') in PLAIN_LOOPS:
        plain = {k: v for k, v in train_cfg.items() if k not in ('type', 'num_random')}
        loop = (f"train_cfg = dict(_delete_=True, type={PLAIN_LOOPS[train_cfg['type']]!r}"
                + ''.join(f', {k}={v!r}' for k, v in plain.items()) + ')\n')
    return (f'# The sub-network found by tools/slim.py in the supernet of\n# {supernet_config}\n'
            f'_base_ = [{supernet_config!r}]\n\n'
            f'model = dict(\n    backbone=dict(\n        _delete_=True,\n'
            f"        type={backbone_type!r},\n        arch={dict(arch)!r},\n{settings}"
            f"        init_cfg=dict(type='Pretrained', checkpoint={checkpoint!r},\n"
            f"                      prefix='backbone.')){necks})\n"
            f'custom_hooks = {hooks!r}\n{loop}')


def plot_path(steps, path, target_ms, family='v1'):
    """PNG of the slimming path: predicted latency against the validation score."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ms = [s['latency_ms'] for s in steps]
    score = [s['score'] for s in steps]
    ax.plot(ms, score, '-o', markersize=3)
    for s in steps[1:]:
        ax.annotate(s['action'][0], (s['latency_ms'], s['score']), fontsize=6)
    ax.axvline(target_ms, color='gray', linestyle='--', label=f'target {target_ms:.1f} ms')
    ax.plot([], [], ' ', label='steps: ' + DESCRIPTIONS[family].replace(', m =', ',\nm ='))
    ax.set_xlabel('predicted latency (ms)')
    ax.set_ylabel('validation score (minus loss)')
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _load_state(checkpoint):
    """The checkpoint file's contents, or a one-line error naming what is wrong with it."""
    import torch
    try:
        return torch.load(checkpoint, map_location='cpu', weights_only=False)
    except Exception as e:  # noqa: BLE001  (EOFError, pickle / zip errors: all mean "not one")
        raise ValueError(f'{checkpoint} is not a readable checkpoint ({type(e).__name__}: '
                         f'{e or "empty file"}): give the supernet checkpoint tools/train.py '
                         'wrote (work_dirs/.../iter_N.pth)') from None


def _portable(path, start):
    """``path`` relative to ``start`` when it lies below the current directory (a config
    that moves with the checkout), else absolute."""
    import os.path as osp
    path = osp.abspath(path)
    if path.startswith(osp.abspath('.') + osp.sep):
        return osp.relpath(path, start)
    return path


def slim_task(config, checkpoint, table, target_ms, work_dir, val_batches=8, input_size=None,
              runtime=None, cfg_options=None, tolerance=None, calib_batches=None,
              cost='latency', mes_weights=(0.5, 0.5), measure=False):
    """What ``tools/slim.py`` does (see it): slims the supernet of ``config`` (trained weights
    in ``checkpoint``) to ``target_ms`` on the latency table file ``table``, scoring with minus
    the loss on ``val_batches`` validation batches, and writes the results to ``work_dir``.
    ``runtime`` (e.g. 'onnxruntime'), when given, must be the table's. ``tolerance`` (a
    fraction of the target; default the median error of the table's own check, else 0): see
    :func:`slim`, as are ``cost`` and ``mes_weights``. ``calib_batches``: training batches each
    candidate's BatchNorm statistics are recalibrated on (V2 supernets; default 4; 0: the
    supernet's statistics). ``measure``: time the found backbone deployed on the table's runtime
    and threads here and compare it with the target. Returns the steps. A run that fails
    removes what it made in ``work_dir``."""
    import os
    import os.path as osp
    import shutil

    from .table import LatencyTable, TableMismatch
    table_path = table
    table = LatencyTable.load(table_path)
    from ..engine import load_config
    cfg, _ = load_config(config, cfg_options)
    backbone = cfg.model.get('backbone', {})
    kind = str(backbone.get('type', '')).split('.')[-1]
    if kind not in FAMILIES:
        raise ValueError(f'{config}: model.backbone is {backbone.get("type")!r}, not an '
                         'EfficientFormerSupernet or EfficientFormerV2Supernet: slim a supernet '
                         'config (configs/supernet/)')
    family = FAMILIES[kind]
    if calib_batches is None:
        calib_batches = 4 if family == 'v2' else 0
    if calib_batches and family == 'v1':
        raise ValueError('--calib-batches is for V2 supernets (trained by the sandwich rule); '
                         'the V1 supernet is scored with its own statistics')
    size = tuple(input_size) if input_size else task_input_size(cfg)
    try:
        table.check(family=family, input_size=size, runtime=runtime)
    except TableMismatch as e:
        hint = '' if input_size else (f' ({size[0]}x{size[1]} is the input of the config\'s '
                                      'test pipeline; --input-size H W slims for another)')
        raise TableMismatch(f'{e}{hint}') from None
    if tolerance is None:
        check = table.meta.get('check')
        tolerance = check['summary']['median_abs_error'] if check else 0.0
    state = _load_state(checkpoint)
    print(f'table: {table.describe()}')
    for warning in table.warnings():
        print(f'warning: {warning}', flush=True)
    if tolerance:
        print(f'tolerance: {100 * tolerance:.1f} % of the target (stops at '
              f'{target_ms * (1 + tolerance):.2f} ms)')
    made = [p for p in (work_dir, osp.join(work_dir, 'runner')) if not osp.exists(p)]
    os.makedirs(work_dir, exist_ok=True)
    search = dict(val_batches=val_batches, calib_batches=calib_batches, tolerance=tolerance,
                  cost=cost, mes_weights=tuple(mes_weights), measure=measure, family=family)
    try:
        return _slim_task(cfg, config, state, checkpoint, table, target_ms, work_dir, search)
    except BaseException:
        for path in reversed(made):  # what this run made, nothing the user had
            shutil.rmtree(path, ignore_errors=True)
        raise


def _first(loader, n):
    batches = []
    for batch in loader:
        if len(batches) == n:
            break
        batches.append(batch)
    return batches


def _slim_task(cfg, config, state, checkpoint, table, target_ms, work_dir, search):
    import os.path as osp

    import torch
    from mmengine.registry import MODELS, DefaultScope

    from ..engine import build_runner, load_config
    from ..fileio import atomic_write
    cfg.work_dir = osp.join(work_dir, 'runner')
    cfg.val_dataloader.dataset.pipeline = annotations_first(cfg.val_dataloader.dataset.pipeline)
    cfg.model.backbone.init_cfg = None  # the checkpoint has all weights
    runner = build_runner(cfg)
    model = runner.model
    from mmengine.runner.checkpoint import _load_checkpoint_to_model
    _load_checkpoint_to_model(model, state, strict=True)
    batches = _first(runner.build_dataloader(cfg.val_dataloader), search['val_batches'])
    calib = _first(runner.build_dataloader(cfg.train_dataloader), search['calib_batches']) \
        if search['calib_batches'] else None
    family = search['family']

    def progress(step):
        print(f"step {step['step']}: {step['action']} ({step['what']}): latency "
              f"{step['latency_ms']:.2f} ms (target {target_ms:.2f}), params "
              f"{step['params_m']:.2f} M, score {step['score']:.4f}", flush=True)

    steps = slim(model.backbone, table, target_ms, loss_evaluator(model, batches,
                                                                   calib_batches=calib),
                 model.backbone.out_indices, progress=progress, tolerance=search['tolerance'],
                 cost=search['cost'], mes_weights=search['mes_weights'])
    found = steps[-1]
    arch = model.backbone.check_subnet(found['arch'])
    backbone_arch = model.backbone.backbone_arch(arch)

    ckpt = osp.join(work_dir, 'subnet.pth')
    config_file = osp.join(work_dir, 'subnet_config.py')
    backbone_type = 'EfficientFormerV2' if family == 'v2' else 'EfficientFormer'
    # the config moves with the results: its checkpoint is found next to it, its base from it
    atomic_write(subnet_config(_portable(config, work_dir), cfg.model.backbone, backbone_arch,
                               '{{ fileDirname }}/subnet.pth', cfg.get('custom_hooks'),
                               cfg.model.get('neck'), backbone_type, cfg.get('train_cfg')),
                 config_file)
    sub_cfg, _ = load_config(config_file)
    sub_cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        subnet_model = MODELS.build(sub_cfg.model)
    if calib:  # the sub-network's own statistics go into its checkpoint
        from ..sandwich import recalibrated
        with recalibrated(model, arch, calib):
            weights = subnet_state_dict(model, subnet_model, arch)
    else:
        weights = subnet_state_dict(model, subnet_model, arch)
    state = {'state_dict': weights, 'meta': dict(arch=backbone_arch, slimmed_from=checkpoint)}
    atomic_write(lambda f: torch.save(state, f), ckpt)
    summary = dict(supernet_arch=found['arch'], arch=found['backbone_arch'],
                   predicted_ms=found['latency_ms'], params_m=found['params_m'],
                   target_ms=target_ms, tolerance=search['tolerance'], cost=search['cost'],
                   calib_batches=search['calib_batches'], table=table.describe())
    if search['cost'] == 'mes':
        summary['mes_weights'] = list(search['mes_weights'])
    if search['measure']:
        summary.update(measure_found(family, backbone_arch, table, target_ms,
                                     search['tolerance']))
    atomic_write(json.dumps(summary, indent=1), osp.join(work_dir, 'arch.json'))
    atomic_write(json.dumps(steps, indent=1), osp.join(work_dir, 'steps.json'))
    plot_path(steps, osp.join(work_dir, 'path.png'), target_ms, family)
    print(f"found {backbone_arch}: predicted {found['latency_ms']:.2f} ms (target "
          f'{target_ms:.2f}); wrote {work_dir}')
    return steps


def measure_found(family, arch, table, target_ms, tolerance, runs=15):
    """Times the found backbone deployed as the table was measured (runtime, threads, input
    size) and says whether it meets the target; returns ``measured_ms`` and ``meets_target``
    (within the tolerance)."""
    import statistics

    from ..runtimes import cpu_info
    from .measure import measure_models
    meta = table.meta
    times = measure_models({'found': (family, arch)}, tuple(meta['input_size']),
                           meta['runtime'], threads=meta.get('threads'), runs=runs)
    measured = statistics.median(times['found'])
    here, there = cpu_info()['model'], meta['cpu']['model']
    ok = measured <= target_ms * (1 + tolerance)
    where = '' if here == there else f' (NOTE: the table is of {there}, this is {here})'
    print(f"measured: the found backbone runs in {measured:.2f} ms ({meta['runtime']}, "
          f"{meta.get('threads')} threads, median of {runs}) against the target "
          f"{target_ms:.2f} ms: {'meets it' if ok else 'MISSES it'}"
          f"{' within the tolerance' if ok and measured > target_ms else ''}{where}")
    return dict(measured_ms=measured, meets_target=ok)
