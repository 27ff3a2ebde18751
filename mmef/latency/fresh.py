"""A table's calibration and check, run in a fresh process.

Whole backbones timed in the process that has just built a table come out slower than in a
new process set up the same way (measured here: V2 at 512x512 about 12 % slower after timing
283 entries; the heap the build leaves behind is not a deployment's). What a user deploys is a
new process, so :func:`mmef.latency.table.build_table` calibrates and checks its table in one:
``python -m mmef.latency.fresh TABLE SETTINGS_JSON`` loads the table (a ``.partial`` file
too), sets up the process as the build's was (threads, freed memory kept, denormals flushed),
fits the correction, runs the check and writes the table back atomically.
"""
import json
import subprocess
import sys


def run(path, calibrate=None, check=None, busy_spread=None):
    """Calibrates (``calibrate``, see :func:`mmef.latency.measure.calibrate`) and checks
    (``check``, see :func:`mmef.latency.measure.self_check`) the table in ``path`` in a new
    Python process with this process's heap and denormal settings; the check runs on other
    archs than the calibration. Raises :class:`mmef.runtimes.BusyMachine` when the machine
    was busy there, RuntimeError with the process's last output on any other failure."""
    from ..runtimes import _ALLOCATOR, _DENORMALS, BusyMachine
    settings = dict(calibrate=calibrate, check=check, busy_spread=busy_spread,
                    keep_freed_memory=_ALLOCATOR['kept'], flush_denormals=_DENORMALS['flushed'])
    proc = subprocess.run([sys.executable, '-m', 'mmef.latency.fresh', path,
                           json.dumps(settings)], capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ['(no output)'])[-1]
        if last.startswith('BusyMachine: '):
            raise BusyMachine(last[len('BusyMachine: '):])
        raise RuntimeError(f'the calibration and check of {path} failed in its process:\n'
                           f'{proc.stderr[-3000:]}')


def main(argv=None):
    import torch

    from ..runtimes import BusyMachine, flush_denormals, keep_freed_memory
    from .measure import calibrate_and_check
    from .table import LatencyTable
    path, settings = argv if argv is not None else sys.argv[1:]
    s = json.loads(settings)
    if s['keep_freed_memory']:
        keep_freed_memory()
    if s['flush_denormals']:
        flush_denormals()
    table = LatencyTable.load(path, partial=True)
    torch.set_num_threads(table.meta['threads'])
    try:
        calibrate_and_check(table, s['calibrate'], s['check'], s['busy_spread'])
    except BusyMachine as e:
        sys.exit(f'BusyMachine: {e}')
    table.save(path)


if __name__ == '__main__':
    main()
