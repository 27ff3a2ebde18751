"""Latency-driven slimming (the EfficientFormer paper's search, section 4.2) of an
:class:`~mmef.models.EfficientFormerSupernet` with a latency table.

From the whole supernet down, one action per step:

1. ``identity``: the least important MetaPath still computing a block becomes the identity
   (every stage keeps at least one block);
2. ``mb3d``: the first MB3D block becomes an MB4D (the MB3D blocks stay the end of stage 4);
3. ``narrow``: the least important stage (its MetaPaths' importances summed) loses 16 channels
   (not below the table's smallest width).

Each action's latency gain comes from the table; its score drop is evaluated by the caller's
``evaluate(arch)`` (higher is better, on validation data with the supernet's weights); the
action with the smallest drop per millisecond saved is taken, until the predicted latency is at
most the target. Importances are the supernet's (:meth:`EfficientFormerSupernet.importance`).
"""
import json

from .blocks import arch_entries

ACTIONS = ('identity', 'mb3d', 'narrow')


def _blocks(arch):
    return [list(stage) for stage in arch['blocks']]


def _arch(widths, blocks):
    return dict(widths=tuple(widths), blocks=tuple(tuple(s) for s in blocks))


def candidates(supernet, arch, min_widths, step=16):
    """{action: (description, next arch)} of the actions possible from ``arch``."""
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


def smallest_arch(supernet, min_widths):
    """The cheapest arch the actions reach: the smallest widths, one MB4D per stage."""
    blocks = [['mb4d'] + ['identity'] * (len(stage.blocks) - 1) for stage in supernet.stages]
    return _arch(min_widths, blocks)


def slim(supernet, table, target_ms, evaluate, out_indices=(0, 1, 2, 3), start=None,
         progress=None, tolerance=0.0):
    """Slims ``supernet`` to ``target_ms`` on ``table`` (see the module docstring).

    Args:
        supernet: an :class:`~mmef.models.EfficientFormerSupernet`.
        table: a :class:`~mmef.latency.LatencyTable` of the V1 family, covering the supernet's
            widths.
        target_ms (float): latency budget of the deployed backbone, as the table predicts it.
        evaluate (callable): ``evaluate(arch) -> float``, higher is better.
        out_indices: the backbone outputs the task uses (their norms are timed parts).
        start (dict, optional): the arch to start from; default the whole supernet.
        progress (callable, optional): called with each step's record.
        tolerance (float): slimming stops at ``target_ms * (1 + tolerance)``: a prediction is
            no closer to a measurement than the table's own error, and one more step to cover
            a miss smaller than that can cost much of the score.

    Returns:
        list[dict]: the steps, each with ``step``, ``action``, ``what``, ``arch``,
        ``backbone_arch``, ``latency_ms``, ``score``, ``entries`` ({key: count}) and, from
        step 1, ``gain_ms``, ``drop`` and the ``tried`` actions (latency and score each).
    """
    if table.family != 'v1':
        raise ValueError(f'the supernet is EfficientFormer (V1); the table is a '
                         f'{table.family} table: build a v1 table (tools/latency_table.py build)')
    space = table.space
    min_widths = tuple(max(lo, 16) for lo in space.min_widths)
    arch = supernet.check_subnet(start or supernet.largest_arch())
    too_wide = [i for i in range(4) if arch['widths'][i] > space.max_widths[i]]
    if too_wide:
        raise ValueError(f'the supernet is wider than the table at stages {too_wide} (widths '
                         f'{list(arch["widths"])}, table up to {list(space.max_widths)}): build '
                         'a table that covers it (tools/latency_table.py build --max-widths)')

    def latency(a):
        return table.predict(supernet.backbone_arch(a), out_indices)

    floor = latency(smallest_arch(supernet, min_widths))
    if target_ms < floor:
        raise ValueError(f'target {target_ms:.2f} ms is below the smallest latency slimming '
                         f'can reach on this table ({floor:.2f} ms: one MB4D per stage, widths '
                         f'{list(min_widths)}); raise the target')

    def record(step, action, what, a, ms, score, **extra):
        backbone = supernet.backbone_arch(a)
        entries = arch_entries('v1', backbone, out_indices)
        rec = dict(step=step, action=action, what=what, arch=_listed(a),
                   backbone_arch=_listed(backbone), latency_ms=ms, score=score,
                   entries={e.key: n for e, n in sorted(entries.items())}, **extra)
        if progress is not None:
            progress(rec)
        return rec

    ms, score = latency(arch), float(evaluate(arch))
    steps = [record(0, 'start', 'the whole supernet' if start is None else 'given arch', arch,
                    ms, score)]
    while ms > target_ms * (1 + tolerance):
        tried = {}
        for action, (what, new) in candidates(supernet, arch, min_widths).items():
            new_ms = latency(new)
            if new_ms >= ms:
                continue  # saves nothing
            new_score = float(evaluate(new))
            tried[action] = dict(what=what, arch=new, latency_ms=new_ms, score=new_score,
                                 per_ms=(score - new_score) / (ms - new_ms))
        if not tried:
            raise RuntimeError(f'no action lowers the latency below {ms:.2f} ms (target '
                               f'{target_ms:.2f} ms)')
        action = min(tried, key=lambda a: (tried[a]['per_ms'], ACTIONS.index(a)))
        best = tried[action]
        steps.append(record(len(steps), action, best['what'], best['arch'], best['latency_ms'],
                            best['score'], gain_ms=ms - best['latency_ms'],
                            drop=score - best['score'],
                            tried={a: dict(latency_ms=t['latency_ms'], score=t['score'])
                                   for a, t in tried.items()}))
        arch, ms, score = best['arch'], best['latency_ms'], best['score']
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


def loss_evaluator(model, batches, seed=0):
    """``evaluate(arch)`` for :func:`slim`: minus the model's mean total loss on ``batches``
    (data batches with annotations) with the supernet fixed to ``arch``, in eval mode (BatchNorm
    statistics of the supernet), with the random state reset (samplers of two-stage heads draw
    at random) so that every arch sees the same draws."""
    import torch

    backbone = model.backbone

    def evaluate(arch):
        backbone.fix(arch, full_width_outputs=True)  # the supernet's neck takes them
        model.eval()
        torch.manual_seed(seed)
        total = 0.
        with torch.no_grad():
            for batch in batches:
                data = model.data_preprocessor(batch, False)
                losses = model.loss(data['inputs'], data['data_samples'])
                total += float(sum(v.sum() for k, v in losses.items() if 'loss' in k
                                   and torch.is_tensor(v)))
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


def subnet_config(supernet_config, backbone, arch, checkpoint, custom_hooks, neck=None):
    """Text of a config that inherits the supernet's and trains the found sub-network:
    ``EfficientFormer(arch=...)`` with ``backbone`` (the supernet's backbone settings that carry
    over) initialised from ``checkpoint``, the neck's ``in_channels`` (when ``neck`` has them)
    the sub-network's output widths, the temperature hook removed."""
    keep = {k: v for k, v in backbone.items()
            if k in ('in_channels', 'out_indices', 'frozen_stages', 'norm_eval',
                     'drop_path_rate', 'layer_scale_init_value', 'attn_bias_mode',
                     'attn_bias_resolution')}
    hooks = [h for h in custom_hooks or [] if h.get('type') != 'SupernetTemperatureHook']
    settings = ''.join(f'        {k}={v!r},\n' for k, v in keep.items())
    necks = ''
    if neck and 'in_channels' in neck:
        indices = backbone.get('out_indices', (0, 1, 2, 3))
        necks = f',\n    neck=dict(in_channels={[arch["widths"][i] for i in indices]!r})'
    return (f'# The sub-network found by tools/slim.py in the supernet of\n# {supernet_config}\n'
            f'_base_ = [{supernet_config!r}]\n\n'
            f'model = dict(\n    backbone=dict(\n        _delete_=True,\n'
            f"        type='EfficientFormer',\n        arch={dict(arch)!r},\n{settings}"
            f"        init_cfg=dict(type='Pretrained', checkpoint={checkpoint!r},\n"
            f"                      prefix='backbone.')){necks})\n"
            f'custom_hooks = {hooks!r}\n')


def plot_path(steps, path, target_ms):
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
    ax.plot([], [], ' ', label='steps: i = a block to identity, m = an MB3D to MB4D,\n'
            'n = a stage 16 channels narrower')
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
              runtime=None, cfg_options=None, tolerance=None):
    """What ``tools/slim.py`` does (see it): slims the supernet of ``config`` (trained weights
    in ``checkpoint``) to ``target_ms`` on the latency table file ``table``, scoring with minus
    the loss on ``val_batches`` validation batches, and writes the results to ``work_dir``.
    ``runtime`` (e.g. 'onnxruntime'), when given, must be the table's. ``tolerance`` (a
    fraction of the target; default the median error of the table's own check, else 0): see
    :func:`slim`. Returns the steps. A run that fails removes what it made in ``work_dir``."""
    import os
    import os.path as osp
    import shutil

    from .table import LatencyTable, TableMismatch
    table_path = table
    table = LatencyTable.load(table_path)
    from ..engine import load_config
    cfg, _ = load_config(config, cfg_options)
    backbone = cfg.model.get('backbone', {})
    if str(backbone.get('type', '')).split('.')[-1] != 'EfficientFormerSupernet':
        raise ValueError(f'{config}: model.backbone is {backbone.get("type")!r}, not an '
                         'EfficientFormerSupernet: slim a supernet config (configs/supernet/)')
    size = tuple(input_size) if input_size else task_input_size(cfg)
    try:
        table.check(family='v1', input_size=size, runtime=runtime)
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
    try:
        return _slim_task(cfg, config, state, checkpoint, table, target_ms, work_dir,
                          val_batches, tolerance)
    except BaseException:
        for path in reversed(made):  # what this run made, nothing the user had
            shutil.rmtree(path, ignore_errors=True)
        raise


def _slim_task(cfg, config, state, checkpoint, table, target_ms, work_dir, val_batches,
               tolerance):
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
    batches = []
    for batch in runner.build_dataloader(cfg.val_dataloader):
        batches.append(batch)
        if len(batches) == val_batches:
            break

    def progress(step):
        print(f"step {step['step']}: {step['action']} ({step['what']}): latency "
              f"{step['latency_ms']:.2f} ms (target {target_ms:.2f}), score "
              f"{step['score']:.4f}", flush=True)

    steps = slim(model.backbone, table, target_ms, loss_evaluator(model, batches),
                 model.backbone.out_indices, progress=progress, tolerance=tolerance)
    found = steps[-1]
    arch = model.backbone.check_subnet(found['arch'])
    backbone_arch = model.backbone.backbone_arch(arch)

    ckpt = osp.join(work_dir, 'subnet.pth')
    config_file = osp.join(work_dir, 'subnet_config.py')
    # the config moves with the results: its checkpoint is found next to it, its base from it
    atomic_write(subnet_config(_portable(config, work_dir), cfg.model.backbone, backbone_arch,
                               '{{ fileDirname }}/subnet.pth', cfg.get('custom_hooks'),
                               cfg.model.get('neck')), config_file)
    sub_cfg, _ = load_config(config_file)
    sub_cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        subnet_model = MODELS.build(sub_cfg.model)
    state = {'state_dict': subnet_state_dict(model, subnet_model, arch),
             'meta': dict(arch=backbone_arch, slimmed_from=checkpoint)}
    atomic_write(lambda f: torch.save(state, f), ckpt)
    atomic_write(json.dumps(dict(supernet_arch=found['arch'], arch=found['backbone_arch'],
                                 predicted_ms=found['latency_ms'], target_ms=target_ms,
                                 tolerance=tolerance, table=table.describe()), indent=1),
                 osp.join(work_dir, 'arch.json'))
    atomic_write(json.dumps(steps, indent=1), osp.join(work_dir, 'steps.json'))
    plot_path(steps, osp.join(work_dir, 'path.png'), target_ms)
    print(f"found {backbone_arch}: predicted {found['latency_ms']:.2f} ms (target "
          f'{target_ms:.2f}); wrote {work_dir}')
    return steps
