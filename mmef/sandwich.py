"""Training and evaluating a slimmable supernet (:class:`~mmef.models.EfficientFormerV2Supernet`)
with any mmdet / mmseg config: the sandwich rule and BatchNorm recalibration.

**Sandwich rule** (``train_cfg = dict(type='SandwichIterBasedTrainLoop', ..., num_random=2)``,
or ``SandwichEpochBasedTrainLoop``): every iteration runs the same batch through the smallest
sub-network of the supernet's trained range, ``num_random`` random ones and the largest (the
whole supernet), each with its own forward and backward; the gradients add up (each loss
divided by the number of passes) and the optimizer steps once. The random sub-networks come
from a generator seeded with the runner's seed and the iteration, so every process of a
distributed run draws the same ones. The largest runs last: it uses every parameter, which is
what DDP's gradient reduction (after the other passes ran under ``no_sync``) needs.

**BatchNorm statistics** are shared by all sub-networks but differ between them. During
training only the largest pass updates the running statistics (the other passes normalise
with their batch statistics and leave the running ones alone), so the supernet as trained
evaluates as the largest network. Before a smaller sub-network is evaluated,
:func:`recalibrated` recomputes the statistics it sees (the backbone's and the neck's / head's)
on training batches and restores the supernet's afterwards.

**In-place distillation** (``distill=dict(weight=W)`` in the loop's config, off by default):
the smaller passes also learn the largest network's neck features (:func:`sandwich_step`).
"""
import contextlib
import random

import torch
import torch.nn.functional as F
from mmengine.model import is_model_wrapper
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.nn.modules.batchnorm import _BatchNorm


def _backbone(model):
    module = model.module if is_model_wrapper(model) else model
    backbone = getattr(module, 'backbone', None)
    if not (hasattr(backbone, 'fix') and hasattr(backbone, 'random_arch')):
        raise TypeError(f'the sandwich rule trains a model whose backbone is a slimmable '
                        f'supernet (EfficientFormerV2Supernet), got '
                        f'{type(backbone).__name__}: use the plain IterBasedTrainLoop / '
                        'EpochBasedTrainLoop for it')
    return module, backbone


def sandwich_archs(backbone, seed, iteration, num_random):
    """The sub-networks of one iteration: smallest, ``num_random`` random, largest (last)."""
    rng = random.Random(f'{seed}/{iteration}')
    return ([backbone.smallest_arch()] + [backbone.random_arch(rng) for _ in range(num_random)]
            + [backbone.largest_arch()])


def batchnorms(*modules):
    """The BatchNorm layers of ``modules`` (None entries skipped), each once."""
    seen = {}
    for module in modules:
        for m in module.modules() if module is not None else ():
            if isinstance(m, _BatchNorm):
                seen[id(m)] = m
    return list(seen.values())


@contextlib.contextmanager
def running_stats_kept(*modules):
    """BatchNorm layers of ``modules`` normalise as usual but leave their running statistics
    as they are (momentum 0)."""
    layers = batchnorms(*modules)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def check_distill(distill):
    """A normalised copy of the ``distill`` option (None: off); ValueError naming the fix."""
    if distill is None:
        return None
    if not isinstance(distill, dict) or set(distill) - {'weight'}:
        raise ValueError(f"distill is None or dict(weight=W) (in-place distillation of the "
                         f"features the neck gives), got {distill!r}")
    weight = distill.get('weight', 1.0)
    if not (isinstance(weight, (int, float)) and weight > 0):
        raise ValueError(f'distill weight must be a positive number, got {weight!r}')
    return dict(weight=float(weight))


def _features_of(module):
    """The module whose outputs are distilled: the neck, or the backbone without one."""
    return module.neck if getattr(module, 'with_neck', False) else module.backbone


def sandwich_step(model, data_batch, optim_wrapper, archs, distill=None):
    """One sandwich iteration (see the module docstring); returns the log variables: the
    largest network's losses, ``loss_smallest`` and ``loss_sandwich`` (mean over passes).

    ``distill=dict(weight=W)``: in-place distillation. The largest network (``archs[-1]``)
    first computes the features its neck gives (no gradients, running statistics kept); every
    other pass adds ``W *`` the mean squared difference between its own neck features and those,
    relative to their mean square (scale-free: features of an untrained network can be large),
    summed over levels, to its loss, logged as ``loss_distill`` (of the smallest pass).
    Features rather than predictions, so that one rule serves mmdet's detectors and mmseg's
    segmentors; the teacher is an extra forward, so the largest pass can stay last for DDP."""
    module, backbone = _backbone(model)
    distill = check_distill(distill)
    if getattr(optim_wrapper, '_accumulative_counts', 1) != 1:
        raise ValueError('the sandwich rule accumulates the gradients of its passes itself: '
                         'remove accumulative_counts from optim_wrapper')
    total, logs, teacher, captured = 0., {}, None, []
    hook = None
    try:
        with optim_wrapper.optim_context(model):
            data = module.data_preprocessor(data_batch, training=True)
        if distill:
            backbone.fix(archs[-1], full_width_outputs=True)
            with torch.no_grad(), running_stats_kept(module, backbone.fixed_module), \
                    optim_wrapper.optim_context(model):
                teacher = [f.detach() for f in module.extract_feat(data['inputs'])]
            hook = _features_of(module).register_forward_hook(
                lambda m, args, out: captured.append(out))
        for p, arch in enumerate(archs):
            last = p == len(archs) - 1
            backbone.fix(arch, full_width_outputs=True)  # the supernet's neck takes them
            sync = contextlib.nullcontext() if last or not hasattr(model, 'no_sync') \
                else model.no_sync()
            stats = contextlib.nullcontext() if last else \
                running_stats_kept(module, backbone.fixed_module)
            captured.clear()
            with sync, stats, optim_wrapper.optim_context(model):
                losses = model(**data, mode='loss')
                if distill and not last:
                    if len(captured) != 1:
                        raise RuntimeError(f'in-place distillation expected one forward of '
                                           f'{type(_features_of(module)).__name__} per pass, '
                                           f'saw {len(captured)}')
                    losses['loss_distill'] = distill['weight'] * sum(
                        F.mse_loss(s, t) / t.square().mean().clamp_min(1e-12)
                        for s, t in zip(captured[0], teacher))
                loss, log_vars = module.parse_losses(losses)
                optim_wrapper.backward(loss / len(archs))
            total += float(loss.detach())
            if p == 0:
                logs['loss_smallest'] = loss.detach()
                if distill:
                    logs['loss_distill'] = log_vars['loss_distill']
            if last:
                logs.update(log_vars)
    finally:
        if hook is not None:
            hook.remove()
        backbone.fix(None)
    optim_wrapper.step()
    optim_wrapper.zero_grad()
    logs['loss_sandwich'] = torch.tensor(total / len(archs))
    return logs


class _Sandwich:
    """The iteration of both sandwich loops."""

    def _check_sandwich(self, num_random, distill):
        if not (isinstance(num_random, int) and num_random >= 0):
            raise ValueError(f'num_random must be an int >= 0, got {num_random!r}')
        self.num_random = num_random
        self.distill = check_distill(distill)
        _backbone(self.runner.model)

    def _sandwich_iter(self, batch_idx, data_batch):
        runner = self.runner
        runner.call_hook('before_train_iter', batch_idx=batch_idx, data_batch=data_batch)
        _, backbone = _backbone(runner.model)
        archs = sandwich_archs(backbone, runner.seed, self._iter, self.num_random)
        outputs = sandwich_step(runner.model, data_batch, runner.optim_wrapper, archs,
                                self.distill)
        runner.call_hook('after_train_iter', batch_idx=batch_idx, data_batch=data_batch,
                         outputs=outputs)
        self._iter += 1


@LOOPS.register_module()
class SandwichIterBasedTrainLoop(_Sandwich, IterBasedTrainLoop):
    """mmengine's IterBasedTrainLoop with sandwich-rule iterations (module docstring).

    Args:
        num_random (int): Random sub-networks per iteration besides the smallest and the
            largest. Defaults to 2.
        distill (dict, optional): ``dict(weight=W)`` for in-place distillation
            (:func:`sandwich_step`). Defaults to None (off).
        others: as for ``IterBasedTrainLoop``.
    """

    def __init__(self, runner, dataloader, max_iters, val_begin=1, val_interval=1000,
                 dynamic_intervals=None, num_random=2, distill=None):
        super().__init__(runner, dataloader, max_iters, val_begin, val_interval,
                         dynamic_intervals)
        self._check_sandwich(num_random, distill)

    def run_iter(self, data_batch):
        self._sandwich_iter(self._iter, data_batch)


@LOOPS.register_module()
class SandwichEpochBasedTrainLoop(_Sandwich, EpochBasedTrainLoop):
    """mmengine's EpochBasedTrainLoop with sandwich-rule iterations (module docstring).

    Args:
        num_random (int): Random sub-networks per iteration besides the smallest and the
            largest. Defaults to 2.
        distill (dict, optional): ``dict(weight=W)`` for in-place distillation
            (:func:`sandwich_step`). Defaults to None (off).
        others: as for ``EpochBasedTrainLoop``.
    """

    def __init__(self, runner, dataloader, max_epochs, val_begin=1, val_interval=1,
                 dynamic_intervals=None, num_random=2, distill=None):
        super().__init__(runner, dataloader, max_epochs, val_begin, val_interval,
                         dynamic_intervals)
        self._check_sandwich(num_random, distill)

    def run_iter(self, idx, data_batch):
        self._sandwich_iter(idx, data_batch)


@contextlib.contextmanager
def recalibrated(model, arch, batches, full_width_outputs=True):
    """Within the block, ``model``'s supernet backbone computes the sub-network ``arch`` with
    BatchNorm statistics recomputed for it: every BatchNorm of the model (backbone, neck, heads)
    reset and averaged over the forward passes of ``batches`` (training data batches, run in
    training mode without gradients). The model is put in eval mode inside; on exit its
    statistics, mode and unfixed backbone come back. ``full_width_outputs``: see
    :meth:`~mmef.models.supernet.SubnetSlicing.fix` (the supernet's neck takes the outputs)."""
    if not batches:
        raise ValueError('BatchNorm recalibration needs at least one training batch')
    module, backbone = _backbone(model)
    was_training = module.training
    buffers = dict(module.named_buffers())
    saved = {k: v.clone() for k, v in buffers.items()
             if k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))}
    backbone.fix(arch, full_width_outputs=full_width_outputs)
    module.train()  # norm_eval and frozen stages keep their BatchNorms in eval mode: not reset
    layers = [m for m in batchnorms(module) if m.training and m.track_running_stats]
    sub_layers = batchnorms(backbone.fixed_module)
    momenta = [m.momentum for m in layers + sub_layers]
    try:
        with torch.no_grad():
            for m in layers:  # the supernet's statistics, which the sub-network slices
                m.reset_running_stats()
            for m in layers + sub_layers:
                m.momentum = None  # a cumulative average over the batches
            for batch in batches:
                data = module.data_preprocessor(batch, True)
                module(**data, mode='loss')
        for m, momentum in zip(layers + sub_layers, momenta):
            m.momentum = momentum
        module.eval()
        yield model
    finally:
        for m, momentum in zip(layers + sub_layers, momenta):
            m.momentum = momentum
        backbone.fix(None)
        with torch.no_grad():
            for key, value in saved.items():
                buffers[key].copy_(value)
        module.train(was_training)
