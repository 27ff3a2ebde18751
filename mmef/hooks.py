"""Training hooks of mmef, registered in mmengine's root HOOKS registry (which mmdet's and
mmseg's fall back to), so ``custom_hooks`` in their configs find them after ``import mmef``."""
import math

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

SCHEDULES = ('exp', 'linear')


@HOOKS.register_module()
class SupernetTemperatureHook(Hook):
    """Sets the Gumbel-softmax temperature ``tau`` of an :class:`EfficientFormerSupernet`
    backbone before every training iteration, from ``start`` at the first iteration to ``end``
    at the last: exponentially (``schedule='exp'``, the usual annealing) or linearly.

    Example (in a supernet config)::

        custom_hooks = [dict(type='SupernetTemperatureHook', start=5.0, end=0.5)]
    """

    priority = 'NORMAL'

    def __init__(self, start=5., end=0.5, schedule='exp'):
        if not (start > 0 and end > 0):
            raise ValueError(f'temperatures must be positive, got start={start!r}, end={end!r}')
        if schedule not in SCHEDULES:
            raise ValueError(f'schedule must be one of {SCHEDULES}, got {schedule!r}')
        self.start, self.end, self.schedule = float(start), float(end), schedule

    def temperature(self, progress):
        """tau at ``progress`` in [0, 1] of the training."""
        if self.schedule == 'linear':
            return self.start + (self.end - self.start) * progress
        return self.start * math.exp(math.log(self.end / self.start) * progress)

    @staticmethod
    def supernet(runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        backbone = getattr(model, 'backbone', None)
        if not hasattr(backbone, 'tau') or not hasattr(backbone, 'meta_paths'):
            raise TypeError('SupernetTemperatureHook needs a model whose backbone is an '
                            f'EfficientFormerSupernet, got {type(backbone).__name__}: remove '
                            'the hook or use the supernet backbone')
        return backbone

    def before_train(self, runner):
        self.supernet(runner)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        progress = runner.iter / max(runner.max_iters - 1, 1)
        self.supernet(runner).tau = self.temperature(min(progress, 1.0))
