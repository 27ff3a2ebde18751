"""Latency tables: block latencies measured on the user's machine, and predictions from them.

A table is JSON a person can read and diff::

    {"format": 1,
     "meta": {"family": "v1", "input_size": [800, 1344], "batch": 1, "runtime": "torch",
              "runtime_version": ..., "torch_version": ..., "device": "cpu", "threads": 2,
              "dtype": "fp32", "cpu": {"model": ..., "flags": [...]}, "runs": 10, "warmup": 3,
              "date": ..., "space": {...}, "method": ...},
     "entries": {"mb4d0:48": {"ms": 12.3, "q1": 12.1, "q3": 12.6, "min": 12.0, "max": 13.1,
                              "runs_ms": [...], "context": ["mb4d0:48"]}, ...}}

``ms`` is the median of ``runs`` timed runs (``runs_ms``); ``q1`` / ``q3`` the quartiles. The runs
are split over ``sweeps`` passes over the whole table (``meta['sweeps']``), each visit of an entry
compiling it anew and running ``warmup`` untimed runs first; ``sweeps_ms`` holds the median of each
visit. A slow spell of the host (minutes long on shared machines) then falls on a share of every
stage's runs instead of on all the runs of the stage being timed during it, where it would be baked
into that stage's entries; ``meta['drift']`` records how far the sweeps' sums of each stage
differ, the host's drift during the build (:func:`sweep_drift`). An entry far slower than its
neighbours of other widths is timed twice more (:func:`retime_outliers`) and its statistics are
then those of all its runs.
Each entry is timed in its deployed form right after the part that precedes it in a network
(:func:`mmef.latency.blocks.context_of`), so its weights and input are as cold or warm in cache as
they are there; only the entry itself is inside the timer. On OpenVINO (:func:`in_graph`) the
entry and its context are compiled as one model and the context alone as another, and the entry's
time is the difference (:class:`EntryTimer`): a compiled model's input and output boundary costs
more there than many blocks, and a network's blocks do not cross one.
"""
import datetime
import json
import os
import statistics
import sys
import time
from collections import defaultdict

from .blocks import (Entry, arch_entries, build_entry, context_of, in_graph_models,
                     space_entries)
from .space import SearchSpace

FORMAT = 1
# what makes a table valid for a question: these must match the one asked
VALIDITY = ('family', 'input_size', 'batch', 'runtime', 'device', 'allocator', 'denormals')
BUSY_RETRIES = 2  # an entry timed on a busy machine is timed this many more times
SWEEPS = 3  # passes over the table that share an entry's timed runs (build_table)
DRIFT_WARN = 0.10  # a stage's sums in two sweeps further apart than this: the host drifted
METHODS = {  # how the entries were timed (EntryTimer), recorded in a table's meta
    'chained': 'each entry deployed, timed right after the part that precedes it in a network '
               '(its context); median of the timed runs',
    'in-graph': 'each entry deployed and compiled in one model with the part that precedes it in '
                'a network (its context), the context alone in another; median of the differences '
                'of their runs, each right after an untimed run of the same model'}
CONTEXT_PAUSE_S = 0.02  # OpenVINO: before each run of another model (EntryTimer)


class TableMismatch(ValueError):
    """A table used for another family, input size, batch, runtime or device than asked."""


class MissingEntries(KeyError):
    """An arch needs entries the table lacks."""

    def __str__(self):
        return self.args[0]


class LatencyTable:
    """Block latencies of one family at one input size on one runtime (see the module docstring).

    Example:
        >>> table = LatencyTable.load('work_dirs/lut_v1_800x1344.json')
        >>> table.predict('l1')                       # milliseconds
        >>> table.breakdown('l1')['per_kind']         # {'stem': ..., 'mb4d': ..., ...}
    """

    def __init__(self, meta, entries):
        self.meta, self.entries = meta, entries

    # ---------------------------------------------------------------- file
    @classmethod
    def load(cls, path, partial=False):
        """The table in ``path``; a one-line ValueError when it is missing, empty, truncated,
        not a table (a study, sweep or observe file) or, unless ``partial``, the ``.partial``
        file of an interrupted build."""
        build = 'build one with tools/latency_table.py build'
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ValueError(f'latency table {path} does not exist; {build}') from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f'{path} is not a readable latency table (empty or truncated JSON: '
                             f'{e}); {build} (an interrupted build keeps its entries in '
                             'OUT.partial and resumes there)') from None
        kind = data.get('kind') if isinstance(data, dict) else None
        if kind:
            raise ValueError(f'{path} is a {kind} file of tools/latency_table.py {kind}, not a '
                             f'latency table; give the table it was made from ({build})')
        if not isinstance(data, dict) or data.get('format') != FORMAT or 'meta' not in data \
                or not isinstance(data.get('entries'), dict):
            raise ValueError(f'{path} is not an mmef latency table (format {FORMAT}); {build}')
        if not partial and 'finished' not in data['meta']:
            raise ValueError(f'{path} is an interrupted build ({len(data["entries"])} entries), '
                             'not a finished table: run the build command again (with --out '
                             'the name without .partial) to resume and finish it')
        return cls(data['meta'], data['entries'])

    def to_json(self):
        return json.dumps(dict(format=FORMAT, meta=self.meta, entries=dict(sorted(
            self.entries.items(), key=lambda kv: Entry.parse(kv[0])))), indent=1)

    def save(self, path):
        """Writes the table atomically (a temporary file renamed over ``path``)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}'
        with open(tmp, 'w') as f:
            f.write(self.to_json() + '\n')
        os.replace(tmp, path)

    # ---------------------------------------------------------------- questions
    @property
    def family(self):
        return self.meta['family']

    @property
    def space(self):
        return SearchSpace.from_dict(self.meta['space'])

    def describe(self):
        m = self.meta
        where = m.get('gpu') or m['cpu']['model']
        return (f"{m['family']} table, input {m['input_size'][0]}x{m['input_size'][1]}, batch "
                f"{m['batch']}, {m['runtime']} {m['runtime_version']} ({m['dtype']}) on "
                f"{m['device']} ({where}), {m['threads']} threads, {len(self.entries)} entries, "
                f"{m['date']}")

    def warnings(self):
        """Why this table's predictions may not hold here, as sentences (empty: none known):
        it was built on another CPU (model or SIMD flags); the host's speed drifted between its
        sweeps (:func:`sweep_drift`); its own check at the end of the build
        (:func:`mmef.latency.measure.self_check`) missed the targets; it has no check."""
        from ..runtimes import cpu_info
        from .measure import TARGETS
        out = []
        there, here = self.meta['cpu'], cpu_info()
        if self.meta['device'] == 'cpu' and (there['model'], sorted(there.get('flags', []))) \
                != (here['model'], sorted(here['flags'])):
            out.append(f"the table was built on another host ({there['model']}, "
                       f"{' '.join(there.get('flags', []))}); this is {here['model']} "
                       f"({' '.join(here['flags'])}): its predictions are for that machine "
                       '(build one here: tools/latency_table.py build)')
        drift = self.meta.get('drift')
        if drift and drift['worst'] > DRIFT_WARN:
            stages = ', '.join(f'stage {i + 1} {100 * d:.0f} %' for i, d in
                               enumerate(drift['per_stage']) if d > DRIFT_WARN)
            out.append(f"the host's speed drifted while the table was built: the entries' sums "
                       f"in its {drift['sweeps']} sweeps differ by up to "
                       f"{100 * drift['worst']:.0f} % ({stages}); the "
                       'medians over the sweeps absorb a slow spell in one of them, not a '
                       'host that changed for good: build it again on a quiet machine')
        check = self.meta.get('check')
        if check is None:
            out.append('the table has no check of its own (whole backbones timed at the end of '
                       'the build); add one: tools/latency_table.py check TABLE')
        elif check['misses']:
            s = check['summary']
            out.append(f"the table's own check ({s['n']} whole backbones, {check['date']}) "
                       f"missed the targets ({'; '.join(check['misses'])}; targets: median "
                       f"<= {100 * TARGETS['median_abs_error']:g} %, worst <= "
                       f"{100 * TARGETS['worst_abs_error']:g} %): its predictions may be off by "
                       'that much')
        return out

    def check(self, **asked):
        """Raises :class:`TableMismatch` naming each of ``asked`` (family, input_size, batch,
        runtime, device, allocator, denormals) that differs from the table's."""
        wrong = []
        for key, value in asked.items():
            if key not in VALIDITY:
                raise ValueError(f'unknown table property {key!r}; valid: {VALIDITY}')
            if value is None:
                continue
            # tables from before mmef recorded it ran with IEEE denormals
            have = self.meta.get(key, 'kept' if key == 'denormals' else None)
            value = list(value) if isinstance(value, (tuple, list)) else value
            if have != value:
                wrong.append(f'{key} {have} in the table, {value} asked')
        if wrong:
            raise TableMismatch('latency table does not fit: ' + '; '.join(wrong) + '. Build a '
                                'table for what you ask (tools/latency_table.py build)')
        return self

    def arch(self, arch):
        """``arch`` (a released name or an arch dict) normalised for the table's family."""
        return self.space.arch(arch)

    def used(self, arch, out_indices=(0, 1, 2, 3)):
        """Counter {Entry: count} of the arch; raises :class:`MissingEntries` listing the entries
        the table lacks (never extrapolates)."""
        arch = self.arch(arch)
        outside = self._outside_space(arch)
        if outside:
            raise ValueError(f'arch outside the search space of the table ({"; ".join(outside)}): '
                             'a table predicts the archs of the space it was built for, whose '
                             'blocks it timed in their context; it does not extrapolate')
        used = arch_entries(self.family, arch, out_indices)
        missing = sorted(e.key for e in used if e.key not in self.entries)
        if missing:
            lo, hi = self.meta['space']['min_widths'], self.meta['space']['max_widths']
            raise MissingEntries(
                f'the table lacks {len(missing)} entries this arch needs: '
                f'{", ".join(missing[:12])}{" ..." if len(missing) > 12 else ""} (table widths '
                f'{lo}..{hi} per stage; arch widths {list(arch["widths"])}). Build a table that '
                'covers them (tools/latency_table.py build --min-widths / --max-widths)')
        return used

    def _outside_space(self, arch):
        """What of ``arch`` no table of its family can have: widths off the step, depths
        beyond the space's, MLP ratios not in it (widths outside this table's range are
        :class:`MissingEntries`, whose fix is a wider table)."""
        space = self.space
        out = [f'stage {i + 1} width {w} is not a multiple of {space.step}'
               for i, w in enumerate(arch['widths']) if w % space.step]
        out += [f'stage {i + 1} depth {d} is not in [1, {space.max_depths[i]}]'
                for i, d in enumerate(arch['depths']) if not 1 <= d <= space.max_depths[i]]
        return out + [v for v in space.violations(arch) if v.startswith('MLP ratios')]

    def predict(self, arch, out_indices=(0, 1, 2, 3), stat='ms', raw=False):
        """Predicted milliseconds of the deployed backbone: the sum of its entries' medians
        (``stat='min'``: of their fastest runs, to compare with a whole backbone's fastest),
        through the table's correction when it has one (:meth:`corrected`; ``raw``: the plain
        sum)."""
        if stat not in ('ms', 'min'):
            raise ValueError(f"stat must be 'ms' (median) or 'min', got {stat!r}")
        return self.corrected(self.used(arch, out_indices),
                              {key: v[stat] for key, v in self.entries.items()}, raw)

    def corrected(self, used, ms, raw=False):
        """The prediction from entry times ``ms`` ({key: ms}) of the entries ``used``
        ({Entry: count}): with the table's correction (``meta['correction']``, fitted on whole
        backbones at the end of the build, :func:`mmef.latency.measure.fit_correction`),
        ``sum_s scale_s * (stage s's entries) + attention_extra * (attention entries) +
        per_entry_ms * (entries used)``; else (or ``raw``) the plain sum of the entries."""
        sums, attention, n = stage_sums(used, ms)
        c = self.meta.get('correction')
        if raw or not c:
            return sum(sums)
        return (sum(a * t for a, t in zip(c['stage_scale'], sums))
                + c['attention_extra'] * attention + c['per_entry_ms'] * n)

    def breakdown(self, arch, out_indices=(0, 1, 2, 3)):
        """Parts of the prediction: ``total``, ``per_stage`` {stage: ms}, ``per_kind``
        {kind: ms} and ``rows`` [(key, count, ms each, ms total)]."""
        used = self.used(arch, out_indices)
        per_stage, per_kind, rows = defaultdict(float), defaultdict(float), []
        for e, n in sorted(used.items()):
            ms = self.entries[e.key]['ms']
            per_stage[e.stage] += ms * n
            per_kind[e.kind] += ms * n
            rows.append((e.key, n, ms, ms * n))
        return dict(total=sum(r[3] for r in rows), per_stage=dict(per_stage),
                    per_kind=dict(per_kind), rows=rows)


ATTENTION_KINDS = ('flatten', 'mb3df', 'mb3d', 'normt', 'adown', 'attnf', 'attn')


def stage_sums(used, ms):
    """([ms of stage 0..3's entries], ms of the attention entries (:data:`ATTENTION_KINDS`),
    entries counted) of ``used`` ({Entry: count}) from the entry times ``ms`` ({key: ms})."""
    sums, attention, n = [0.0] * 4, 0.0, 0
    for e, k in used.items():
        sums[e.stage] += ms[e.key] * k
        if e.kind in ATTENTION_KINDS:
            attention += ms[e.key] * k
        n += k
    return sums, attention, n


# -------------------------------------------------------------------------- building
def _quartiles(times_ms):
    q = statistics.quantiles(times_ms, n=4, method='inclusive') if len(times_ms) > 1 \
        else [times_ms[0]] * 3
    return dict(ms=round(statistics.median(times_ms), 4), q1=round(q[0], 4), q3=round(q[2], 4),
                min=round(min(times_ms), 4), max=round(max(times_ms), 4))


class _Progress:
    """A one-line progress bar on stderr: done / total, the entry being timed, elapsed / ETA."""

    def __init__(self, total, done, enabled=True, stream=None):
        self.total, self.done, self.start, self.new = total, done, time.time(), 0
        self.enabled, self.stream = enabled, stream or sys.stderr

    def show(self, key):
        if not self.enabled:
            return
        frac = self.done / max(self.total, 1)
        bar = '#' * int(30 * frac)
        elapsed = time.time() - self.start
        eta = elapsed / self.new * (self.total - self.done) if self.new else 0
        self.stream.write(f'\r[{bar:<30}] {self.done}/{self.total} {key:<18} '
                          f'{elapsed:5.0f}s elapsed, ~{eta:5.0f}s left ')
        self.stream.flush()

    def step(self):
        self.done += 1
        self.new += 1

    def close(self):
        if self.enabled:
            self.stream.write('\n')


def in_graph(runtime):
    """Whether ``runtime``'s entries are timed inside one compiled graph with their context
    (:func:`mmef.latency.blocks.in_graph_models`) rather than after it: OpenVINO, whose model
    boundaries cost more than many blocks (module docstring)."""
    return runtime.startswith('openvino')


class EntryTimer:
    """``entry`` deployed and compiled for a runtime, with its context: :meth:`time` times it
    as many times as asked. ``contexts`` caches compiled context modules between timers (a
    dict).

    PyTorch and onnxruntime: the context runs (compiled on its own) and then the timed entry;
    the timer holds the entry's forward and the release of its input, as inside a network (the
    next part frees what the previous one made).

    OpenVINO (:func:`in_graph`): the context and the entry are compiled as one model and the
    context alone as another (:func:`mmef.latency.blocks.in_graph_models`); each round times
    one run of each, each run right after an untimed run of the same model (OpenVINO gives
    each compiled model its own threads: the run before wakes them, and a short pause before
    it lets the other model's threads settle), and the entry's time is the difference. Its
    context is not shared with other timers (``contexts`` is not used): a process that holds
    many compiled OpenVINO models runs each of them slower (their threads are pinned to the same
    cores; L1 bf16 19.6 -> 24.5 ms with 60 more models held, docs/latency.md), and a deployment
    holds one.
    The times are then differences, whose spread says little; :attr:`samples` holds the runs
    of the two models, where a busy machine shows.
    """

    def __init__(self, family, entry, input_size, runtime, device, threads, batch,
                 contexts=None):
        from ..runtimes import compile_module, timer
        contexts = {} if contexts is None else contexts
        self.key, self.clock, self.samples = entry.key, timer(device), None
        self.in_graph = in_graph(runtime)
        if self.in_graph:
            with_entry, context_only, example = in_graph_models(family, entry, input_size,
                                                                batch)
            target = compile_module(with_entry, example, runtime, device, threads,
                                    name=entry.key)
            self.models = [(target, target.native(example))]
            if context_only is not None:  # compiled for this entry alone (see the docstring)
                base = compile_module(context_only, example, runtime, device, threads,
                                      name=f'context of {entry.key}')
                self.models.append((base, base.native(example)))
            return
        module, example = build_entry(family, entry, input_size, batch)
        self.target = compile_module(module, example, runtime, device, threads, name=entry.key)
        self.chain = []  # the context: compiled entries run in order, the first on its example
        for ctx_entry in context_of(family, entry):
            if ctx_entry.key not in contexts:
                ctx_module, ctx_example = build_entry(family, ctx_entry, input_size, batch, seed=1)
                compiled = compile_module(ctx_module, ctx_example, runtime, device, threads,
                                          name=ctx_entry.key, spin=False)
                contexts[ctx_entry.key] = (compiled, compiled.native(ctx_example))
            self.chain.append(contexts[ctx_entry.key])
        self.fixed = None if self.chain else self.target.native(example)

    def _input(self):
        if not self.chain:
            return self.fixed
        x = self.chain[0][1]
        for compiled, _ in self.chain:
            x = compiled.run(x)
        return x

    def time(self, runs, warmup=0):
        """Milliseconds of ``runs`` timed runs after ``warmup`` untimed ones."""
        if self.in_graph:
            return self._time_in_graph(runs, warmup)
        times = []
        for i in range(warmup + runs):
            box = [self._input()]
            seconds, out = self.clock(lambda: self.target.run(box.pop()))
            del out
            if i >= warmup:
                times.append(seconds * 1e3)
        return times

    def _time_in_graph(self, runs, warmup):
        rounds = []
        for i in range(warmup + runs):
            ms = []
            for compiled, x in self.models:
                time.sleep(CONTEXT_PAUSE_S)
                compiled.run(x)  # untimed: wakes this model's threads
                seconds, out = self.clock(compiled.run, x)
                del out
                ms.append(seconds * 1e3)
            if i >= warmup:
                rounds.append(ms)
        names = [f'{self.key} with its context', f'the context of {self.key}']
        self.samples = {name: [r[j] for r in rounds] for j, name in enumerate(names[:len(
            self.models)])}
        return [r[0] - (r[1] if len(r) > 1 else 0) for r in rounds]


def time_entry(family, entry, input_size, runtime, device, threads, batch, runs, warmup,
               contexts=None, samples=None):
    """Times ``entry`` (deployed, on ``runtime``) in its context (:class:`EntryTimer`); returns
    the milliseconds of the ``runs`` timed runs. ``samples``, a dict when given, receives the
    runs of the two models of an entry timed in-graph (:attr:`EntryTimer.samples`), where a
    busy machine shows; it stays empty when the times are those runs themselves."""
    timer = EntryTimer(family, entry, input_size, runtime, device, threads, batch, contexts)
    times = timer.time(runs, warmup)
    if samples is not None and timer.samples:
        samples.update(timer.samples)
    return times


def _requested(requested):
    return 'the whole space' if requested == 'space' else f'{len(requested)} entries'


def sweep_runs(runs, sweeps):
    """How many of ``runs`` timed runs each of ``sweeps`` visits of an entry makes (the first
    ones take the remainder): ``sweep_runs(10, 3) == [4, 3, 3]``."""
    if not 1 <= sweeps <= runs:
        raise ValueError(f'{sweeps} sweeps cannot share {runs} timed runs of an entry (each '
                         'sweep times every entry at least once): ask for at least as many runs '
                         'as sweeps (--runs / --sweeps)')
    return [runs // sweeps + (i < runs % sweeps) for i in range(sweeps)]


def _visits(entries, key):
    # every row of a build has sweeps_ms: a partial file of other settings is refused
    return len(entries[key]['sweeps_ms']) if key in entries else 0


def _time_entries(family, todo, entries, meta, input_size, runtime, device, threads, batch,
                  runs, warmup, busy_spread, contexts, bar, partial_path):
    """The timing loop of :func:`build_table`: ``meta['sweeps']`` passes over ``todo``, each
    visiting every entry not yet timed in that pass (:func:`sweep_runs` of its runs, after
    ``warmup``); ``entries`` saved to ``partial_path`` after each visit."""
    from ..runtimes import BusyMachine, busy, busy_message
    for sweep, n in enumerate(sweep_runs(runs, meta['sweeps'])):
        for entry in todo:
            if _visits(entries, entry.key) > sweep:
                continue
            bar.show(f'{entry.key} ({sweep + 1}/{meta["sweeps"]})')
            for attempt in range(BUSY_RETRIES + 1):
                samples = {}
                times = time_entry(family, entry, input_size, runtime, device, threads, batch,
                                   n, warmup, contexts, samples)
                spreads = busy(samples or {entry.key: times}, busy_spread)
                if not spreads:
                    break
            else:
                raise BusyMachine(busy_message(
                    f'entry {entry.key} ({BUSY_RETRIES + 1} times)', spreads, busy_spread)
                    + f'. The entries timed so far ({_done(entries, todo, meta)}) are kept in '
                    f'{partial_path}: the same command resumes there')
            row = entries.get(entry.key, dict(runs_ms=[], sweeps_ms=[]))
            run_ms = row['runs_ms'] + [round(t, 4) for t in times]
            entries[entry.key] = dict(_quartiles(run_ms), runs_ms=run_ms,
                                      sweeps_ms=row['sweeps_ms'] + [
                                          round(statistics.median(times), 4)],
                                      context=[e.key for e in context_of(family, entry)])
            LatencyTable(meta, entries).save(partial_path)
            bar.step()


def _done(entries, todo, meta):
    sweeps = meta['sweeps']
    visits = sum(min(_visits(entries, e.key), sweeps) for e in todo)
    return (f'{visits} of {len(todo) * sweeps} visits: {len(todo)} entries x {sweeps} sweeps, '
            f'{sum(_visits(entries, e.key) >= sweeps for e in todo)} entries done')


def sweep_drift(table):
    """How far the host's speed moved during the build, from the entries' visits in each sweep:
    ``{'stage_sums_ms': [[stage s's sum of the entries' medians in each sweep] per stage],
    'per_stage': [max / min - 1 of those sums], 'worst': max of them, 'sweeps': n}``; None for a
    table timed in one sweep. Each entry is counted once, so a stage with many entries at
    one width weighs as the table does, not as a network does."""
    sweeps = table.meta.get('sweeps', 1)
    if sweeps < 2:
        return None
    sums = [[0.0] * sweeps for _ in range(4)]
    for key, row in table.entries.items():
        for i, ms in enumerate(row.get('sweeps_ms', [])[:sweeps]):
            sums[Entry.parse(key).stage][i] += ms
    per_stage = [round(max(s) / min(s) - 1, 4) if min(s) > 0 else 0.0 for s in sums]
    return dict(stage_sums_ms=[[round(v, 3) for v in s] for s in sums], per_stage=per_stage,
                worst=max(per_stage), sweeps=sweeps)


def build_table(family, input_size, out, runtime='torch', device='cpu', threads=None, batch=1,
                runs=10, warmup=3, space=None, keys=None, progress=True, overwrite=False,
                busy_spread=None, check=None, calibrate=None, sweeps=None):
    """Times every entry of ``space`` (default: the family's whole space) or only ``keys``,
    and writes the table to ``out`` atomically.

    Each entry's ``runs`` timed runs are split over ``sweeps`` passes over all the entries
    (:func:`sweep_runs`; each visit compiles the entry and runs ``warmup`` untimed runs first;
    default :data:`SWEEPS`, or ``runs`` when fewer): the module docstring says why. The host's
    drift between the sweeps is stored under ``meta['drift']`` (:func:`sweep_drift`) and
    reported by :meth:`LatencyTable.warnings` beyond :data:`DRIFT_WARN`.

    The entries timed so far are kept in ``out + '.partial'`` (rewritten atomically after each
    entry): an interrupted build started again with the same settings resumes there without
    re-timing them; other settings are refused rather than mixed. Returns the table.

    An entry whose runs spread beyond ``busy_spread`` (q3 / q1; default
    :data:`mmef.runtimes.BUSY_SPREAD`, 0 checks nothing) is timed again, up to
    :data:`BUSY_RETRIES` times; then the build stops with :class:`mmef.runtimes.BusyMachine`
    (the entries timed so far stay in the ``.partial`` file).

    ``check`` (a dict: ``archs``, ``random``, ``runs``, ``warmup``; see
    :func:`mmef.latency.measure.check_archs`) makes the build check itself at its end: those
    whole backbones are timed and the table's prediction errors stored under ``meta['check']``
    (:meth:`LatencyTable.warnings` reports a check that missed the targets). ``calibrate``
    (a dict: ``archs``, ``random``, ``seed``, ``runs``, ``warmup``) first times those whole
    backbones and fits the table's correction on them
    (:func:`mmef.latency.measure.calibrate`); the check then runs on the other archs. Both run
    in a fresh process (:mod:`mmef.latency.fresh`), as a deployment would.
    """
    import torch

    from ..runtimes import BUSY_SPREAD, BusyMachine, check_available, runtime_info
    check_available(runtime, device)
    busy_spread = BUSY_SPREAD if busy_spread is None else busy_spread
    space = space or SearchSpace.default(family)
    if space.family != family:
        raise ValueError(f'search space of family {space.family} given for family {family}')
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f'{out} exists; choose another --out or pass --overwrite to '
                              'replace it')
    sweeps = min(SWEEPS, runs) if sweeps is None else sweeps
    sweep_runs(runs, sweeps)  # refuses sweeps that cannot share the runs
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    todo = sorted(space_entries(space)) if keys is None else sorted(Entry.parse(k) for k in keys)
    meta = dict(family=family, input_size=list(input_size), batch=batch,
                **runtime_info(runtime, device, threads), runs=runs, warmup=warmup,
                sweeps=sweeps, space=space.to_dict(),
                method=METHODS['in-graph' if in_graph(runtime) else 'chained'],
                date=datetime.datetime.now().isoformat(timespec='seconds'),
                requested='space' if keys is None else [e.key for e in todo])
    partial_path = out + '.partial'
    entries = {}
    if os.path.exists(partial_path):
        partial = LatencyTable.load(partial_path, partial=True)
        same = ('family', 'input_size', 'batch', 'runtime', 'runtime_version', 'device',
                'threads', 'dtype', 'runs', 'warmup', 'sweeps', 'torch_version', 'space',
                'allocator', 'denormals', 'method')
        diff = [k for k in same if partial.meta.get(k) != meta[k]]
        if partial.meta['cpu'] != meta['cpu']:
            diff.append('cpu')
        if diff:
            raise TableMismatch(f'{partial_path} holds an interrupted build with other settings '
                                f'({", ".join(f"{k}: {partial.meta.get(k)}" for k in diff)}); '
                                'resume it with those settings, or delete it to start anew')
        if partial.meta.get('requested', 'space') != meta['requested']:
            raise TableMismatch(
                f'{partial_path} holds an interrupted build of other entries (another --archs / '
                f'--random / --seed: {_requested(partial.meta.get("requested", "space"))} '
                f'there, {_requested(meta["requested"])} asked); resume it with the same '
                'options, or delete it to start anew')
        entries = {k: v for k, v in partial.entries.items()}
        meta['date'] = partial.meta['date']
        print(f'resuming the interrupted build in {partial_path}: '
              f'{_done(entries, todo, meta)} already timed (since {meta["date"]})',
              file=sys.stderr)
    bar = _Progress(len(todo) * sweeps, sum(min(_visits(entries, e.key), sweeps) for e in todo),
                    progress)
    contexts = {}
    try:
        _time_entries(family, todo, entries, meta, input_size, runtime, device, threads, batch,
                      runs, warmup, busy_spread, contexts, bar, partial_path)
    except KeyboardInterrupt:
        bar.close()
        raise KeyboardInterrupt(
            f'interrupted: the entries timed so far ({_done(entries, todo, meta)}) are kept in '
            f'{partial_path}; the same command resumes there') from None
    bar.close()
    table = LatencyTable(meta, entries)
    meta['drift'] = sweep_drift(table)
    retime_outliers(table, runs=runs, warmup=warmup, progress=progress, contexts=contexts,
                    save_to=partial_path)
    contexts.clear()
    if calibrate or check:
        from . import fresh
        if progress:
            print('calibrating and checking the table on whole backbones, in a fresh process',
                  file=sys.stderr)
        table.save(partial_path)
        try:
            fresh.run(partial_path, calibrate, check, busy_spread)
        except BusyMachine as e:
            raise BusyMachine(f'{e}. Every entry is timed and kept in {partial_path}: the same '
                              'command calibrates and checks the table again and writes it') \
                from None
        table = LatencyTable.load(partial_path, partial=True)
        meta = table.meta
    meta['finished'] = datetime.datetime.now().isoformat(timespec='seconds')
    table.save(out)
    if os.path.exists(partial_path):
        os.remove(partial_path)
    return table


def outliers(table, tolerance=0.25):
    """Keys of the entries slower than their neighbours of the same kind, stage (and input width
    / MLP ratio) suggest by more than ``tolerance``: candidates for a measurement hit by a burst
    of load from other processes (load only ever adds time; a kernel that is really slower at
    one width is confirmed by timing it again). Entries already re-timed are not flagged."""
    groups = defaultdict(list)
    for key in table.entries:
        e = Entry.parse(key)
        groups[(e.kind, e.stage, e.in_width, e.ratio)].append(e)
    flagged = []
    for members in groups.values():
        if len(members) < 3:
            continue
        members.sort(key=lambda e: e.width)
        ms = [table.entries[e.key]['ms'] for e in members]
        for i, e in enumerate(members):
            if 'retimed' in table.entries[e.key]:
                continue
            if 0 < i < len(members) - 1:
                expected = max(ms[i - 1], ms[i + 1])
            else:
                expected = ms[1] if i == 0 else ms[i - 1]
                # the last width may cost more than its neighbour: by the step's share at most
                expected *= 1 + abs(e.width - members[1 if i == 0 else i - 1].width) / e.width
            if ms[i] > (1 + tolerance) * expected:
                flagged.append(e.key)
    return flagged


def retime_outliers(table, runs=10, warmup=3, times=2, progress=True, contexts=None,
                    save_to=None):
    """Times each entry :func:`outliers` flags ``times`` more times, on the table's settings,
    and recomputes its statistics over all its runs (so one measurement taken during a burst of
    load does not decide the entry); each measurement's median is kept under ``retimed``.
    Returns the flagged keys."""
    m = table.meta
    flagged = outliers(table)
    bar = _Progress(len(flagged), 0, progress)
    for key in flagged:
        bar.show('re-time ' + key)
        row = table.entries[key]
        medians, samples = [row['ms']], list(row.get('runs_ms', []))
        for _ in range(times):
            ts = time_entry(m['family'], Entry.parse(key), tuple(m['input_size']), m['runtime'],
                            m['device'], m['threads'], m['batch'], runs, warmup, contexts)
            medians.append(round(statistics.median(ts), 4))
            samples += [round(t, 4) for t in ts]
        row['retimed'] = medians
        if 'runs_ms' in row:  # the statistics of all the runs, which one burst cannot move much
            row.update(_quartiles(samples), runs_ms=samples)
        else:  # a table written without its runs: the median of the measurements' medians
            row['ms'] = statistics.median(medians)
            row['min'] = min(row['min'], min(samples))
        if save_to:
            table.save(save_to)
        bar.step()
    bar.close()
    return flagged
