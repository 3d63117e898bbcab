"""``mnistgen sweep SWEEP.toml --out DIR``: many trainings of one model, a grid (or list) of settings times seeds.
The sweep file, the trials' folders and the summary: docs/SCALING.md, 'Sweeps, locally and on a cluster'."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import difflib
import hashlib
import io
import itertools
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import NON_NEGATIVE, POSITIVE, GANConfig, VAEConfig, config_from_settings, option, validate
from .errors import MnistgenError, TrainingInterrupted
from .files import atomic_write
from .stats import Interval, interval, t_quantile_975  # noqa: F401 - t_quantile_975 re-exported

SPEC_KEYS = ("model", "seeds", "replicas", "base", "grid", "list")
SEED_KEYS = ("seed", "seeds", "replicas")  # only [base] may hold one: seed, the first of replicas = N
MODELS = {"vae": VAEConfig, "gan": GANConfig}
NAME_LIMIT = 120  # characters of a configuration's folder name; longer ones end in a hash
PRIVATE_RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report
    # Ray's own name for "a single machine": its node address is 127.0.0.1 (not the address of the interface that
    # routes to 8.8.8.8, which Ray otherwise looks up and would turn 127.0.0.1 into)
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@dataclass(frozen=True)
class SweepOptions:
    engine: Literal["local", "ray"] = option(
        "local", "local: a pool of processes on this machine; ray: one Ray task per trial, on a Ray cluster "
        "(--address) or on a Ray instance started here for the sweep")
    jobs: int = option(0, "local engine: trials at a time (0: one per CPU core); ray without --address: the CPUs "
                          "of the Ray instance started here (0: all cores)", NON_NEGATIVE)
    address: str | None = option(
        None, "ray engine: address of a running Ray cluster (HOST:PORT, or auto); without it, a Ray instance "
              "private to this machine (127.0.0.1) runs the sweep")
    cpus_per_trial: float = option(
        1.0, "ray engine: CPUs each trial asks Ray for (its torch threads too, unless the sweep sets threads)",
        POSITIVE)
    max_trials: int = option(1000, "refuse a sweep of more trials (configurations x seeds) than this, before "
                                   "anything runs", POSITIVE)


@dataclass(frozen=True)
class Sweep:
    model: Literal["vae", "gan"]
    seeds: tuple[int, ...]
    base: dict[str, Any]
    configurations: tuple[tuple[str, dict[str, Any]], ...]  # (name, the settings that vary), in file order
    source: str = ""  # the sweep file's text, for the summary page


@dataclass(frozen=True)
class Trial:
    model: str
    configuration: str
    seed: int
    settings: dict[str, Any]  # keyword settings of train_vae/train_gan, the seed included
    folder: str


@dataclass(frozen=True)
class TrialResult:
    configuration: str
    seed: int
    status: Literal["trained", "skipped", "failed"]
    numbers: dict[str, float] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class SweepResult:
    results: tuple[TrialResult, ...]
    csv_path: Path
    html_path: Path

    @property
    def failed(self) -> list[TrialResult]:
        return [result for result in self.results if result.status == "failed"]


def read_sweep(path: str | os.PathLike, max_trials: int = SweepOptions.max_trials) -> Sweep:
    """Parse and check a sweep file; anything wrong is one line (:class:`UsageError` where a flag would refuse it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MnistgenError(f"{path}: no such sweep file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MnistgenError(f"{path}: cannot read it ({exc})") from None
    return parse_sweep(text, str(path), max_trials)


def parse_sweep(text: str, where: str = "SWEEP.toml", max_trials: int = SweepOptions.max_trials) -> Sweep:
    """:func:`read_sweep` of a sweep file's text (``where`` names it in errors); too many trials are refused first."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same module, from PyPI, where installed
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise MnistgenError("mnistgen sweep reads TOML with Python 3.11's tomllib; on Python 3.10, "
                                "pip install tomli") from None
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError; an integer of over 4,300 digits; deep nesting
        raise MnistgenError(f"{where}: not valid TOML ({exc})") from None
    unknown = [key for key in data if key not in SPEC_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], SPEC_KEYS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"a sweep file has {', '.join(SPEC_KEYS)}"
        raise MnistgenError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} ({hint})")
    model = data.get("model")
    if not isinstance(model, str) or model not in MODELS:
        raise MnistgenError(f"{where}: model must be \"vae\" or \"gan\", got {model!r}")
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise MnistgenError(f"{where}: base must be a table ([base]) of settings")
    _check_keys("[base]", base, model, base, where)
    seeds = _seeds(data, base, MODELS[model], where, max_trials)
    configurations = _configurations(data, base, model, where, len(seeds), max_trials)
    sweep = Sweep(model, seeds, {k: v for k, v in base.items() if k != "seed"}, configurations, text)
    for trial in trials_of(sweep, "."):  # every trial's settings, checked as its flags would be
        _trial_config(trial, where, base)
    return sweep


def _check_keys(table: str, settings: dict[str, Any], model: str, base: dict[str, Any], where: str) -> None:
    """Refuse in ``table`` a key that sets the seeds, one also in [base], or one that is no setting (did you mean)."""
    for key in settings:
        if key in SEED_KEYS and (table, key) != ("[base]", "seed"):
            raise MnistgenError(f"{where}: {table} sets {key}; give the seeds with seeds = [...] or replicas = N at "
                                "the top of the file, before its tables")
        if table != "[base]" and key in base:
            raise MnistgenError(f"{where}: {key} is both in [base] and in {table}")
    config_from_settings(MODELS[model], dict.fromkeys(settings), None, f"{where}: {table}")  # the names alone


def _configurations(data: dict[str, Any], base: dict[str, Any], model: str, where: str, seeds: int,
                    max_trials: int) -> tuple[tuple[str, dict], ...]:
    if "grid" in data and "list" in data:
        raise MnistgenError(f"{where}: give either [grid] or [[list]] tables, not both")
    if "grid" in data:
        grid = data["grid"]
        if not isinstance(grid, dict) or not grid:
            raise MnistgenError(f"{where}: [grid] is empty: give each setting to vary a list of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise MnistgenError(f"{where}: [grid] {key} must be a non-empty list of values, got {values!r}")
        tables, count = [("[grid]", grid)], math.prod(len(values) for values in grid.values())
    elif "list" in data:
        entries = data["list"]
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise MnistgenError(f"{where}: list must be one or more [[list]] tables of settings")
        tables, count = [("[[list]]", entry) for entry in entries], len(entries)
    else:
        tables, count = [], 1
    if count * seeds > max_trials:
        raise MnistgenError(f"{where}: {count} configuration(s) x {seeds} seed(s) = {count * seeds} trials, more "
                            f"than the limit of {max_trials} (raise it with --max-trials)")
    for table, settings in tables:
        _check_keys(table, settings, model, base, where)
    if "grid" in data:
        entries = [dict(zip(grid, combination, strict=True)) for combination in itertools.product(*grid.values())]
    elif "list" not in data:
        entries = [{}]
    named = [(configuration_name(entry), entry) for entry in entries]
    seen: dict[str, dict] = {}
    for name, entry in named:
        if seen.setdefault(name, entry) is not entry:
            raise MnistgenError(f"{where}: two configurations have the folder name {name!r} ({seen[name]} and {entry})")
    return tuple(named)


def _seeds(data: dict[str, Any], base: dict[str, Any], config_class: type, where: str,
           max_trials: int) -> tuple[int, ...]:
    if "seeds" in data and "replicas" in data:
        raise MnistgenError(f"{where}: give either seeds = [...] or replicas = N, not both")
    if "seeds" in data:
        if "seed" in base:
            raise MnistgenError(f"{where}: [base] seed and seeds = [...] both set the seeds; keep one")
        seeds = data["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
            raise MnistgenError(f"{where}: seeds must be a non-empty list of whole numbers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise MnistgenError(f"{where}: seeds holds a seed twice: {seeds!r}")
        return tuple(seeds)
    replicas = data.get("replicas", 1)
    if not _is_int(replicas) or replicas < 1:
        raise MnistgenError(f"{where}: replicas must be a positive whole number, got {replicas!r}")
    if replicas > max_trials:
        raise MnistgenError(f"{where}: replicas = {replicas} is more trials than the limit of {max_trials} (raise it "
                            "with --max-trials)")
    first = base.get("seed", config_class.seed)
    if not _is_int(first):
        raise MnistgenError(f"{where}: [base] seed must be a whole number, got {first!r}")
    return tuple(range(first, first + replicas))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def setting_text(value: Any) -> str:
    """A setting's value as a folder name shows it: 0.001, 100, true, mnist-sample."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def configuration_name(settings: dict[str, Any]) -> str:
    """A configuration's folder name: ``lr=0.001,hidden=100`` (``base`` for none), a long one ended with a hash."""
    if not settings:
        return "base"
    name = ",".join(f"{key}={setting_text(value)}" for key, value in settings.items())
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if len(name) > NAME_LIMIT:
        name = name[:NAME_LIMIT - 9] + "~" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def trials_of(sweep: Sweep, out: str | os.PathLike) -> list[Trial]:
    root = Path(out) / "trials"
    return [Trial(sweep.model, name, seed, {**sweep.base, **settings, "seed": seed},
                  str(root / name / f"seed={seed}"))
            for name, settings in sweep.configurations for seed in sweep.seeds]


def _trial_config(trial: Trial, where: str = "", base: dict[str, Any] | None = None) -> Any:
    """The trial's config; a value its flag would refuse is one line naming the configuration, or [base] where
    [base]'s settings alone are refused the same way."""
    try:
        return config_from_settings(MODELS[trial.model], trial.settings, None, "")
    except MnistgenError as exc:
        culprit = "[base]" if base is not None and _refusal(trial.model, base) == str(exc) else \
            f"configuration {trial.configuration}"
        raise type(exc)(f"{where + ': ' if where else ''}{culprit}: {exc}") from None


def _refusal(model: str, settings: dict[str, Any]) -> str | None:
    try:
        config_from_settings(MODELS[model], settings, None, "")
    except MnistgenError as exc:
        return str(exc)
    return None


HEADLINE_KEYS = {"vae": ("held_out_elbo", "train_elbo"), "gan": ("g_loss", "d_loss")}  # the primary one first
HIGHER_IS_BETTER = {"held_out_elbo": True, "g_loss": False}
PRIMARY_TEXT = {
    "vae": "held_out_elbo: the last epoch's ELBO on the held-out images (test_elbo under the hw protocol, "
           "validation_elbo under full), in nats per image; higher is better",
    "gan": "g_loss: the last epoch's mean generator loss -log D(G(z)); lower first. A GAN's losses are no measure "
           "of its samples' quality: a low g_loss only means that G fools this D",
}


def headline_numbers(model: str, metrics: list[dict[str, Any]]) -> dict[str, float]:
    if not metrics:
        raise MnistgenError("the run recorded no epoch")
    last = metrics[-1]
    if model == "vae":
        held_out = last.get("test_elbo", last.get("validation_elbo"))
        return {"held_out_elbo": held_out, "train_elbo": last["train_elbo"]}
    return {"g_loss": last["g_loss"], "d_loss": last["d_loss"]}


def run_trial(trial: Trial, stop: Callable[[], bool] | None = None) -> TrialResult:
    """Train one trial into its folder, or skip or resume it; never raises: an error becomes a failed result, and so
    does ``stop`` (polled before each step) turning True, after the run saved where it stopped (a rerun resumes)."""
    start = time.perf_counter()
    try:
        import mnistgen

        from .runs import RunDir

        config = _trial_config(trial)
        run = RunDir(trial.folder)
        if run.checkpoint.is_file():
            loaded = mnistgen.load_run(run.path, device="cpu")
            _check_same_settings(trial, loaded.config, config)
            if loaded.epochs >= config.epochs:
                return TrialResult(trial.configuration, trial.seed, "skipped",
                                   headline_numbers(trial.model, loaded.metrics[:config.epochs]))
        train = mnistgen.train_vae if trial.model == "vae" else mnistgen.train_gan
        trained = train(run.path, resume=run.checkpoint.is_file(), show_progress=False, stop=stop, **trial.settings)
        return TrialResult(trial.configuration, trial.seed, "trained", headline_numbers(trial.model, trained.metrics),
                           seconds=time.perf_counter() - start)
    except (Exception, TrainingInterrupted) as exc:  # noqa: BLE001 - a failure of one trial never stops the sweep
        expected = isinstance(exc, MnistgenError | TrainingInterrupted)
        message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        if not expected:
            traceback.print_exc(file=sys.stderr)
        return _failed(trial, message, seconds=time.perf_counter() - start)


def _check_same_settings(trial: Trial, saved: Any, wanted: Any) -> None:
    """Refuse to count a run folder trained with other settings (the sweep file changed) as this trial's."""
    from .config import fixed_settings_changed

    differ = fixed_settings_changed(saved, wanted)
    if differ:
        raise MnistgenError(f"{trial.folder}: holds a run trained with other settings than the sweep file's "
                            f"({', '.join('--' + name.replace('_', '-') for name, _, _ in differ)}); move it away or "
                            "choose another --out")


def _failed(trial: Trial, message: str, seconds: float = 0.0) -> TrialResult:
    one_line = " ".join(message.split()) or "failed without a message"
    return TrialResult(trial.configuration, trial.seed, "failed", error=one_line, seconds=seconds)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _with_threads(trials: list[Trial], threads: int) -> list[Trial]:
    return [trial if "threads" in trial.settings else
            dataclasses.replace(trial, settings={**trial.settings, "threads": threads}) for trial in trials]


def run_local(trials: list[Trial], jobs: int, report: Callable[[TrialResult], None]) -> list[TrialResult]:
    """Train ``trials`` in ``jobs`` worker processes, which die with this one: a dying worker fails its trial alone;
    Ctrl-C stops the busy ones at their next step (saved) and raises :class:`TrainingInterrupted`."""
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    queue = _with_threads(trials, max(1, cpu_cores() // jobs))[::-1]
    workers: list[tuple[Any, Any]] = []  # (connection, process) of every worker started
    idle: list[tuple[Any, Any]] = []
    busy: dict[Any, tuple[Any, Trial]] = {}  # connection: (process, trial)
    results = []
    try:
        while queue or busy:
            while queue and len(busy) < jobs:
                connection, process = idle.pop() if idle else _start_worker(context, workers)
                if not process.is_alive():  # died while idle
                    connection, process = _start_worker(context, workers)
                trial = queue.pop()
                busy[connection] = (process, trial)
                connection.send(trial)
            for connection in wait(list(busy)):
                process, trial = busy.pop(connection)
                try:
                    result = connection.recv()
                    idle.append((connection, process))
                except EOFError:  # the worker process died
                    process.join()
                    result = _failed(trial, f"its worker process {_ended(process.exitcode)}")
                results.append(result)
                report(result)
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted: {len(busy)} trial(s) stopped and saved, {len(queue)} not started; "
                                  "run the same command again to resume them") from None
    finally:
        for connection, _ in workers:
            with contextlib.suppress(OSError):
                connection.send(None)  # an idle worker ends; a busy one stops at its next step (saved), then ends
        for _, process in workers:
            process.join(30)
            process.kill()
            process.join()
    return results


def _start_worker(context: Any, workers: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """A new worker process, added to ``workers``, started with SIGINT blocked (Ctrl-C reaches it as a message)."""
    connection, child = context.Pipe()
    process = context.Process(target=_worker, args=(child, os.getpid()), name="mnistgen sweep worker")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    try:
        process.start()
        workers.append((connection, process))
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    child.close()
    return connection, process


def _worker(connection: Any, parent: int) -> None:
    """A worker of :func:`run_local`: trains each trial ``connection`` brings, until None; a message asks it to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    linux = sys.platform.startswith("linux") and ctypes.CDLL(None).prctl(1, ctypes.c_ulong(signal.SIGKILL)) == 0
    if not linux:  # no PR_SET_PDEATHSIG (1): a thread watches for the parent's end
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)
    for trial in iter(connection.recv, None):
        connection.send(run_trial(trial, stop=connection.poll))


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _ended(exitcode: int) -> str:
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        return f"was killed by signal {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"was killed by signal {-exitcode}"


def run_ray(trials: list[Trial], options: SweepOptions, report: Callable[[TrialResult], None],
            say: Callable[[str], None]) -> list[TrialResult]:
    if not options.address:
        os.environ.update(PRIVATE_RAY_ENVIRONMENT)  # before Ray reads it; inherited by every process of the instance
    try:
        import ray
    except ModuleNotFoundError:
        raise MnistgenError('--engine ray needs Ray, which is not installed: pip install "mnistgen[ray]"') from None
    from ray._private import ray_constants, services

    cluster_constant = ray_constants.ENABLE_RAY_CLUSTER
    if options.address:
        ray.init(address=options.address, logging_level="warning")
    else:
        ray_constants.ENABLE_RAY_CLUSTER = False  # as the variable says, where Ray was imported before it was set
        # No API server ("dashboard") process: without the dashboard, its one module is the usage report, which asks
        # the clouds' metadata servers (169.254.169.254:80, metadata.google.internal) from the machine's interface
        # address even under RAY_USAGE_STATS_ENABLED=0. (None, None) is what Ray goes on with where it fails to start.
        start_api_server, services.start_api_server = services.start_api_server, lambda *args, **kwargs: (None, None)
        try:
            ray.init(address="local", num_cpus=options.jobs or cpu_cores(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", object_store_memory=128 * 2**20, logging_level="warning")
        finally:
            services.start_api_server = start_api_server
    try:
        nodes = sorted({node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")})
        gcs = ray.get_runtime_context().gcs_address
        say(f"ray: {len(nodes)} node(s) ({', '.join(nodes)}), GCS at {gcs}")
        if not options.address and (nodes != ["127.0.0.1"] or not gcs.startswith("127.0.0.1:")):
            raise MnistgenError(f"the Ray instance started for the sweep listens on {', '.join(nodes)}, not only on "
                                "127.0.0.1; refusing to run on it")
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        threads = max(1, math.floor(options.cpus_per_trial))
        tasks = {gpus: ray.remote(num_cpus=options.cpus_per_trial, num_gpus=gpus, max_retries=0)(run_trial)
                 for gpus in (0, 1)}
        pending = {}
        for trial in _with_threads(trials, threads):
            device = trial.settings.get("device", "auto")
            gpus = 1 if device == "cuda" or (device == "auto" and has_gpus) else 0
            pending[tasks[gpus].remote(trial)] = trial
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - the task's worker died, or the node went away
                first_line = (str(exc).strip().splitlines() or [""])[0]  # a RayTaskError holds a traceback
                result = _failed(trial, f"{type(exc).__name__}: {first_line}")
            results.append(result)
            report(result)
        return results
    finally:
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = cluster_constant


def run_sweep(sweep_file: str | os.PathLike, out: str | os.PathLike, options: SweepOptions | None = None,
              say: Callable[[str], None] = print) -> SweepResult:
    """Run the trials of ``sweep_file`` not yet finished under ``out`` and write the summary; failed ones included."""
    options = options or SweepOptions()
    validate(options)
    sweep = read_sweep(sweep_file, options.max_trials)
    out = Path(out).expanduser().resolve()
    from .runs import RunDir

    with RunDir(out).claimed():  # one sweep at a time in a folder
        trials = trials_of(sweep, out)
        jobs = options.jobs or cpu_cores()
        say(f"sweep: {len(sweep.configurations)} configuration(s) x {len(sweep.seeds)} seed(s) = {len(trials)} "
            f"trials, engine {options.engine}" + (f", {jobs} at a time" if options.engine == "local" else ""))

        def report(result: TrialResult) -> None:
            label = f"{result.configuration}/seed={result.seed}"
            if result.status == "failed":
                say(f"  {label}: FAILED: {result.error}")
            elif result.status == "skipped":
                say(f"  {label}: finished before, skipped")
            else:
                numbers = ", ".join(f"{key} {value:.4g}" for key, value in result.numbers.items())
                say(f"  {label}: trained in {result.seconds:.1f} s: {numbers}")

        if options.engine == "ray":
            results = run_ray(trials, options, report, say)
        else:
            results = run_local(trials, min(jobs, len(trials)), report)
        order = {(t.configuration, t.seed): i for i, t in enumerate(trials)}
        results = tuple(sorted(results, key=lambda r: order[(r.configuration, r.seed)]))
        summaries = summarize(sweep, results)
        csv_text, html_text = summary_csv(sweep, summaries), summary_html(sweep, summaries, results, options)
        csv_path, html_path = out / "summary.csv", out / "summary.html"
        atomic_write(csv_path, lambda handle: handle.write(csv_text), mode="w")
        atomic_write(html_path, lambda handle: handle.write(html_text), mode="w")
    counts = {status: sum(r.status == status for r in results) for status in ("trained", "skipped", "failed")}
    say(f"sweep: {counts['trained']} trained, {counts['skipped']} skipped (finished before), {counts['failed']} "
        f"failed; summary: {csv_path}, {html_path}")
    return SweepResult(results, csv_path, html_path)


@dataclass(frozen=True)
class ConfigurationSummary:
    name: str
    settings: dict[str, Any]
    seeds: tuple[int, ...]  # of the trials with numbers
    values: dict[str, tuple[float, ...]]  # per headline key, per seed
    intervals: dict[str, Interval]
    failed: int


def summarize(sweep: Sweep, results: Sequence[TrialResult]) -> list[ConfigurationSummary]:
    """One summary per configuration, best first by the primary headline number (those without numbers last)."""
    keys = HEADLINE_KEYS[sweep.model]
    summaries = []
    for name, settings in sweep.configurations:
        mine = [r for r in results if r.configuration == name]
        good = [r for r in mine if r.status != "failed"]
        values = {key: tuple(r.numbers[key] for r in good) for key in keys}
        intervals = {key: interval(vals) for key, vals in values.items() if vals}
        summaries.append(ConfigurationSummary(name, settings, tuple(r.seed for r in good), values, intervals,
                                              len(mine) - len(good)))
    primary = keys[0]
    sign = -1 if HIGHER_IS_BETTER[primary] else 1
    return sorted(summaries, key=lambda s: (primary not in s.intervals,
                                            sign * s.intervals[primary].mean if primary in s.intervals else 0))


def summary_csv(sweep: Sweep, summaries: list[ConfigurationSummary]) -> str:
    """One row per configuration, best first: rank, configuration, its settings, seeds, then per headline number
    its mean, the half-width of the 95% interval and the per-seed values (``;``-separated, in the seeds' order)."""
    keys = HEADLINE_KEYS[sweep.model]
    setting_names = list(dict.fromkeys(key for _, settings in sweep.configurations for key in settings))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "configuration", *setting_names, "n", "seeds", "failed",
                     *(f"{key}_{part}" for key in keys for part in ("mean", "ci95", "values"))])
    for rank, summary in enumerate(summaries, 1):
        cells: list[Any] = [rank, summary.name, *(setting_text(summary.settings[name]) if name in summary.settings
                                                  else "" for name in setting_names),
                            len(summary.seeds), ";".join(map(str, summary.seeds)), summary.failed]
        for key in keys:
            found = summary.intervals.get(key)
            cells += ["" if found is None else repr(found.mean),
                      "" if found is None or found.half_width is None else repr(found.half_width),
                      ";".join(repr(v) for v in summary.values[key])]
        writer.writerow(cells)
    return buffer.getvalue()


def summary_html(sweep: Sweep, summaries: list[ConfigurationSummary], results: Sequence[TrialResult],
                 options: SweepOptions) -> str:
    from .report.html import Markup, Measured, escape, number_format, page, section, table, text_html

    keys = HEADLINE_KEYS[sweep.model]
    shown = {key: number_format([v for s in summaries for v in s.values[key]]) for key in keys}  # one per column

    def numbers(summary: ConfigurationSummary, key: str) -> Markup | None:
        found, each = summary.intervals.get(key), ", ".join(map(shown[key], summary.values[key]))
        return None if found is None else Markup(shown[key](Measured(found, len(found.values)))
                                                 + (f"<br><small>{each}</small>" if len(found.values) > 1 else ""))

    def name(configuration: str) -> Markup:  # a line may break after each setting
        return Markup(f"<code>{',<wbr>'.join(map(text_html, configuration.split(',')))}</code>")

    rows = [[rank, name(s.name), ", ".join(map(str, s.seeds)), *(numbers(s, key) for key in keys), s.failed]
            for rank, s in enumerate(summaries, 1)]
    headers = ["rank", "configuration", "seeds", *(f"{key}: mean ± 95% interval, each seed" for key in keys), "failed"]
    explanation = (f"<p>Sorted best first by {escape(PRIMARY_TEXT[sweep.model])}. Each number is the mean over the "
                   "configuration's seeds ± the half-width of its 95% Student-t interval, t<sub>0.975, n−1</sub> · "
                   "s / √n (s the standard deviation of the seeds' values, n − 1 in its denominator), then each "
                   "seed's value in the order of the seeds column; with one seed no interval is shown. Every number "
                   "is the last epoch's.</p>")
    failures = [r for r in results if r.status == "failed"]
    failure_html = table(["configuration", "seed", "error"],
                         [[name(r.configuration), Markup(str(r.seed)), r.error]
                          for r in failures]) if failures else ""
    counts = {status: sum(r.status == status for r in results) for status in ("trained", "skipped", "failed")}
    engine = options.engine + (f" at {options.address}" if options.address else "")
    subtitle = [escape(f"{sweep.model.upper()}: {len(sweep.configurations)} configuration(s) x {len(sweep.seeds)} "
                       f"seed(s) ({', '.join(map(str, sweep.seeds))}); engine {engine}; {counts['trained']} trained "
                       f"now, {counts['skipped']} finished before, {counts['failed']} failed")]
    sections = [("results", "Results", section("results", "Results, best first", explanation + table(headers, rows))),
                ("failures", "Failures", section("failures", f"Failed trials ({len(failures)})", failure_html)
                 if failures else ""),
                ("sweep", "Sweep file", section("sweep", "The sweep file", f"<pre>{escape(sweep.source)}</pre>"))]
    return page(f"mnistgen sweep: {sweep.model.upper()}", subtitle, sections)
