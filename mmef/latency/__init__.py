"""Latency on the user's own hardware: the search space, block latency tables built on the
target runtime, predictions from them and the latency report (``tools/latency_table.py``).

    >>> from mmef.latency import LatencyTable
    >>> table = LatencyTable.load('work_dirs/lut_v1_800x1344.json')
    >>> table.predict('l1'), table.breakdown('l1')['per_stage']

See docs/latency.md for the method and the measured accuracy of the predictions.
"""
from .blocks import Entry, arch_entries, space_entries, stage_sizes
from .space import FAMILIES, SearchSpace
from .table import LatencyTable, MissingEntries, TableMismatch, build_table

__all__ = ['Entry', 'arch_entries', 'space_entries', 'stage_sizes', 'FAMILIES', 'SearchSpace',
           'LatencyTable', 'MissingEntries', 'TableMismatch', 'build_table']
