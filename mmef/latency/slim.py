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
import copy

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
        out['identity'] = (f'block {j} of stage {i} ({blocks[i][j]}) -> identity',
                           _arch(arch['widths'], new))
    for j, choice in enumerate(blocks[-1]):
        if choice == 'mb3d':
            new = _blocks(arch)
            new[-1][j] = 'mb4d'
            out['mb3d'] = (f'block {j} of stage 3: mb3d -> mb4d', _arch(arch['widths'], new))
            break
    narrowable = [(sum(importance[i][j] for j, c in enumerate(stage) if c != 'identity'), i)
                  for i, stage in enumerate(blocks) if arch['widths'][i] - step >= min_widths[i]]
    if narrowable:
        _, i = min(narrowable)
        widths = list(arch['widths'])
        widths[i] -= step
        out['narrow'] = (f'stage {i}: {widths[i] + step} -> {widths[i]} channels',
                         _arch(widths, blocks))
    return out


def smallest_arch(supernet, min_widths):
    """The cheapest arch the actions reach: the smallest widths, one MB4D per stage."""
    blocks = [['mb4d'] + ['identity'] * (len(stage.blocks) - 1) for stage in supernet.stages]
    return _arch(min_widths, blocks)


def slim(supernet, table, target_ms, evaluate, out_indices=(0, 1, 2, 3), start=None,
         progress=None):
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
        entries = arch_entries('v1', supernet.backbone_arch(a), out_indices)
        rec = dict(step=step, action=action, what=what, arch=_listed(a),
                   backbone_arch=_listed(supernet.backbone_arch(a)), latency_ms=ms, score=score,
                   entries={e.key: n for e, n in sorted(entries.items())}, **extra)
        if progress is not None:
            progress(rec)
        return rec

    ms, score = latency(arch), float(evaluate(arch))
    steps = [record(0, 'start', 'the whole supernet' if start is None else 'given arch', arch,
                    ms, score)]
    while ms > target_ms:
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
    """An arch dict with lists (JSON-like)."""
    return {k: [list(v) if isinstance(v, tuple) else v for v in vs] if isinstance(vs, tuple)
            and vs and isinstance(vs[0], tuple) else list(vs) if isinstance(vs, tuple) else
            copy.deepcopy(vs) for k, vs in arch.items()}
