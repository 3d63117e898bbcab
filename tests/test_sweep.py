"""``mnistgen sweep``: the sweep file and its errors, trial names, the 95% interval against scipy, the local engine end
to end (summary numbers recomputed from the trials' own metrics, a rerun that skips, a failing trial), and the same
sweep through a real Ray instance on 127.0.0.1 giving the same summary."""

from __future__ import annotations

import contextlib
import csv
import ipaddress
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnistgen.errors import MnistgenError, UsageError
from mnistgen.sweep import (
    SweepOptions,
    TrialResult,
    configuration_name,
    headline_numbers,
    interval,
    parse_sweep,
    read_sweep,
    run_sweep,
    summarize,
    t_quantile_975,
    trials_of,
)

GRID_2X2 = """\
model = "vae"
seeds = [1, 2]
[base]
epochs = 1
dataset = "mnist-sample"
device = "cpu"
threads = 1
[grid]
lr = [1e-3, 3e-3]
hidden = [8, 16]
"""
NAMES_2X2 = ["lr=0.001,hidden=8", "lr=0.001,hidden=16", "lr=0.003,hidden=8", "lr=0.003,hidden=16"]


# --------------------------------------------------------------------------- the sweep file


def test_a_grid_is_every_combination_in_the_files_order_times_the_seeds(tmp_path):
    sweep = parse_sweep(GRID_2X2)
    assert sweep.model == "vae" and sweep.seeds == (1, 2)
    assert [name for name, _ in sweep.configurations] == NAMES_2X2
    assert sweep.configurations[1][1] == {"lr": 1e-3, "hidden": 16}
    trials = trials_of(sweep, tmp_path)
    assert len(trials) == 8
    assert Path(trials[1].folder) == tmp_path / "trials" / "lr=0.001,hidden=8" / "seed=2"
    assert trials[1].settings == {"epochs": 1, "dataset": "mnist-sample", "device": "cpu", "threads": 1,
                                  "lr": 1e-3, "hidden": 8, "seed": 2}


def test_list_tables_and_replicas():
    sweep = parse_sweep('model = "gan"\nreplicas = 3\n[base]\nseed = 5\n[[list]]\nlr_d = 1e-4\n'
                        '[[list]]\nlr_d = 2e-4\nzdim = 32\n')
    assert sweep.seeds == (5, 6, 7)
    assert [name for name, _ in sweep.configurations] == ["lr_d=0.0001", "lr_d=0.0002,zdim=32"]
    assert "seed" not in sweep.base
    # no seeds given: one trial with the model's own default seed; no [grid]: one configuration, "base"
    plain = parse_sweep('model = "vae"\n[base]\nepochs = 1\n')
    assert plain.seeds == (1234,) and plain.configurations == (("base", {}),)


def test_configuration_names_are_readable_and_safe_for_a_folder():
    assert configuration_name({"lr": 0.001, "hidden": 100}) == "lr=0.001,hidden=100"
    assert configuration_name({"lr": 1e-05, "offline": True, "dataset": "mnist-sample"}) == \
        "lr=1e-05,offline=true,dataset=mnist-sample"
    assert configuration_name({"data_dir": "/data/my mnist"}) == "data_dir=_data_my_mnist"
    long = configuration_name({"data_dir": "x" * 300})
    assert len(long) == 120 and long != configuration_name({"data_dir": "x" * 301})


EIGHT_KEYS = ("hidden", "latent_dim", "epochs", "batch_size", "train_samples", "lr_decay_every", "validation_size",
              "download_retries")
ERRORS = [
    ('modle = "vae"\n', MnistgenError, "unknown key(s) 'modle'"),
    ('model = "cnn"\n', MnistgenError, 'model must be "vae" or "gan", got \'cnn\''),
    ('model = "vae"\n[base]\nepoch = 2\n', UsageError, "unknown setting 'epoch' (did you mean 'epochs'?)"),
    ('model = "vae"\n[grid]\nlr = [1e-3, -1.0]\n', UsageError,
     "configuration lr=-1.0: --lr must be a positive number, got -1.0"),
    ('model = "vae"\n[grid]\nprotocol = ["hw", "half"]\n', UsageError, "--protocol must be one of hw, full"),
    ('model = "vae"\n[grid]\n', MnistgenError, "[grid] is empty"),
    ('model = "vae"\n[grid]\nlr = []\n', MnistgenError, "[grid] lr must be a non-empty list of values, got []"),
    ('model = "vae"\n[grid]\nlr = 0.1\n', MnistgenError, "[grid] lr must be a non-empty list of values, got 0.1"),
    ('model = "vae"\n[grid]\nlr = [0.1]\n[[list]]\nlr = 0.1\n', MnistgenError, "either [grid] or [[list]]"),
    ('model = "vae"\n[grid]\nseed = [1, 2]\n', MnistgenError, "[grid] sets seed; give the seeds with seeds"),
    ('model = "vae"\n[base]\nlr = 0.1\n[grid]\nlr = [0.1]\n', MnistgenError, "lr is both in [base] and in [grid]"),
    ('model = "vae"\nseeds = [1]\nreplicas = 2\n', MnistgenError, "either seeds = [...] or replicas = N"),
    ('model = "vae"\nseeds = [1, 1]\n', MnistgenError, "seeds holds a seed twice"),
    ('model = "vae"\nseeds = []\n', MnistgenError, "seeds must be a non-empty list of whole numbers"),
    ('model = "vae"\nreplicas = 0\n', MnistgenError, "replicas must be a positive whole number, got 0"),
    ('model = "vae"\nseeds = [-1]\n', UsageError, "--seed must be in [0, 2**64 - 1], got -1"),
    ('model = "vae"\n[grid]\nlr = [0.1, 0.10]\n', MnistgenError, "two configurations have the folder name"),
    ('model = "vae\n', MnistgenError, "not valid TOML"),
    ('model = "vae"\nx = ' + "[" * 5000 + "]" * 5000 + "\n", MnistgenError, "not valid TOML"),
    # seeds come from seeds or replicas, never from a table (a rerun would find each trial a replica run)
    ('model = "vae"\n[grid]\nreplicas = [2]\n', MnistgenError,
     "[grid] sets replicas; give the seeds with seeds = [...] or replicas = N at the top of the file"),
    ('model = "vae"\n[[list]]\nseeds = "1,2"\n', MnistgenError, "[[list]] sets seeds; give the seeds with seeds"),
    ('model = "vae"\n[base]\nreplicas = 2\n', MnistgenError, "[base] sets replicas; give the seeds with seeds"),
    ('model = ["vae"]\n', MnistgenError, "model must be \"vae\" or \"gan\", got ['vae']"),
    ('model = "vae"\nseed = [1]\n', MnistgenError, "unknown key(s) 'seed' (did you mean 'seeds'?)"),
    ('model = "vae"\n[base]\nepoch = 2\n[grid]\nlr = [0.1]\n', UsageError,
     "s.toml: [base]: unknown setting 'epoch' (did you mean 'epochs'?)"),
    ('model = "vae"\n[base]\nlr = -1.0\n[grid]\nhidden = [8]\n', UsageError,
     "s.toml: [base]: --lr must be a positive number, got -1.0"),
    ('model = "vae"\n[grid]\nlrr = [0.1]\n', UsageError, "s.toml: [grid]: unknown setting 'lrr' (did you mean 'lr'?)"),
    ('model = "gan"\n[[list]]\nzdim = 8\n[[list]]\nzdm = 8\n', UsageError,
     "s.toml: [[list]]: unknown setting 'zdm' (did you mean 'zdim'?)"),
    # the size, from the grid's sizes before anything is expanded (a huge grid: in a capped process, below)
    ('model = "vae"\n[grid]\n' + "".join(f"{key} = {list(range(1, 7))}\n" for key in EIGHT_KEYS[:4]), MnistgenError,
     "1296 configuration(s) x 1 seed(s) = 1296 trials, more than the limit of 1000 (raise it with --max-trials)"),
    ('model = "vae"\nseeds = [1, 2]\n' + "[[list]]\n" * 501, MnistgenError, "501 configuration(s) x 2 seed(s)"),
]


@pytest.mark.parametrize(("text", "kind", "message"), ERRORS)
def test_each_bad_sweep_file_is_one_line_naming_the_problem(text, kind, message):
    with pytest.raises(kind) as caught:
        parse_sweep(text, "s.toml")
    assert message in str(caught.value) and str(caught.value).startswith("s.toml: ")
    assert "\n" not in str(caught.value)


def test_a_missing_sweep_file_is_one_line(tmp_path):
    with pytest.raises(MnistgenError, match=r"nope\.toml: no such sweep file$"):
        read_sweep(tmp_path / "nope.toml")


def test_a_sweep_too_large_is_refused_before_it_is_expanded_and_the_limit_can_be_raised(tmp_path, capsys):
    """The command, in a process with 1 GiB of address space: 8 keys x 10 values (10**8 configurations, gigabytes
    once expanded) and replicas = 10**9 are each refused in one line, and nothing is written."""
    from mnistgen.cli import main

    for name, text in (("grid", '[grid]\n' + "".join(f"{key} = {list(range(1, 11))}\n" for key in EIGHT_KEYS)),
                       ("replicas", "replicas = 1000000000\n")):
        (tmp_path / f"{name}.toml").write_text(f'model = "vae"\n{text}')
        argv = ["sweep", str(tmp_path / f"{name}.toml"), "--out", str(tmp_path / "out")]
        done = subprocess.run([sys.executable, "-c", "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, "
                               f"(1 << 30, 1 << 30)); from mnistgen.cli import main; sys.exit(main({argv!r}))"],
                              capture_output=True, text=True, timeout=300)
        assert (done.returncode, done.stderr.count("\n")) == (1, 1), done.stderr
        assert "than the limit of 1000 (raise it with --max-trials)" in done.stderr
        assert not (tmp_path / "out").exists()
    six = 'model = "vae"\nreplicas = 2\n[grid]\nhidden = [8, 16, 32]\n'
    with pytest.raises(MnistgenError, match=r"3 configuration\(s\) x 2 seed\(s\) = 6 trials, more than the limit of 5"):
        parse_sweep(six, max_trials=5)
    assert len(trials_of(parse_sweep(six, max_trials=6), tmp_path)) == 6
    (tmp_path / "six.toml").write_text(six)
    assert main(["sweep", str(tmp_path / "six.toml"), "--out", str(tmp_path / "out"), "--max-trials", "5"]) == 1
    assert "6 trials, more than the limit of 5 (raise it with --max-trials)" in capsys.readouterr().err


# --------------------------------------------------------------------------- the interval


def test_the_t_quantile_and_the_interval_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 301):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-6), df
    values = [-101.5, -99.25, -100.0, -98.0, -103.125]
    found = interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=found.mean, scale=stats.sem(values))
    assert found.mean == pytest.approx(sum(values) / len(values))
    assert found.half_width == pytest.approx((high - low) / 2, rel=1e-6)
    assert interval([3.0]).half_width is None and interval([3.0, 3.0]).half_width == 0.0


def test_gan_headlines_sort_lower_g_loss_first():
    sweep = parse_sweep('model = "gan"\nseeds = [1]\n[grid]\nzdim = [8, 16]\n')
    assert headline_numbers("gan", [{"epoch": 1, "d_loss": 1.0, "g_loss": 2.0, "d_real": .5}]) == \
        {"g_loss": 2.0, "d_loss": 1.0}
    results = [TrialResult("zdim=8", 1, "trained", {"g_loss": 3.0, "d_loss": 1.0}),
               TrialResult("zdim=16", 1, "trained", {"g_loss": 2.0, "d_loss": 1.0})]
    assert [s.name for s in summarize(sweep, results)] == ["zdim=16", "zdim=8"]


# --------------------------------------------------------------------------- the local engine, end to end


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def held_out(folder: Path) -> tuple[float, float]:
    from mnistgen.runs import RunDir

    last = RunDir(folder).read_metrics()[-1]
    return last["test_elbo"], last["train_elbo"]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The 2x2 grid x 2 seeds through the local engine, 2 processes; (sweep folder, what it said, seconds)."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "s.toml").write_text(GRID_2X2)
    lines: list[str] = []
    start = time.perf_counter()
    result = run_sweep(root / "s.toml", root / "out", SweepOptions(jobs=2), say=lines.append)
    assert not result.failed, result.failed
    return root / "out", lines, time.perf_counter() - start


def test_the_local_engine_trains_every_trial_and_summarizes_them_best_first(local_sweep):
    out, lines, _ = local_sweep
    assert lines[-1].startswith("sweep: 8 trained, 0 skipped (finished before), 0 failed")
    rows = read_rows(out / "summary.csv")
    assert sorted(row["configuration"] for row in rows) == sorted(NAMES_2X2)
    means = [float(row["held_out_elbo_mean"]) for row in rows]
    assert means == sorted(means, reverse=True) and [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    for row in rows:  # every number recomputed from the trials' own metrics.jsonl
        seeds = [1, 2]
        per_seed = [held_out(out / "trials" / row["configuration"] / f"seed={seed}") for seed in seeds]
        for column, values in (("held_out_elbo", [p[0] for p in per_seed]), ("train_elbo", [p[1] for p in per_seed])):
            mean = sum(values) / 2
            half = 12.706205 * abs(values[0] - values[1]) / math.sqrt(2) / math.sqrt(2)  # t_{.975,1} s / sqrt(2)
            assert float(row[f"{column}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row[f"{column}_ci95"]) == pytest.approx(half, rel=1e-6)
            assert [float(v) for v in row[f"{column}_values"].split(";")] == values
        assert (row["n"], row["seeds"], row["failed"]) == ("2", "1;2", "0")
        assert row["lr"] in ("0.001", "0.003") and row["hidden"] in ("8", "16")
    page = (out / "summary.html").read_text()
    assert "Content-Security-Policy" in page and "src=\"http" not in page and "<script" not in page
    assert "95% Student-t interval" in page and "held_out_elbo: the last epoch" in page
    best, worst = (row["configuration"].replace(",", ",<wbr>") for row in (rows[0], rows[-1]))  # breaks after a setting
    assert f"<code>{best}</code>" in page and " ± " in page
    assert page.index(best) < page.index(worst)


def test_a_rerun_skips_finished_trials_and_rewrites_the_same_summary(local_sweep):
    out, _, _ = local_sweep
    checkpoints = sorted((out / "trials").glob("*/seed=*/checkpoint.pt"))
    assert len(checkpoints) == 8
    before = {path: path.stat().st_mtime_ns for path in checkpoints}
    summary = (out / "summary.csv").read_text()
    lines: list[str] = []
    run_sweep(out.parent / "s.toml", out, SweepOptions(jobs=2), say=lines.append)
    assert lines[-1].startswith("sweep: 0 trained, 8 skipped (finished before), 0 failed")
    assert sum("finished before, skipped" in line for line in lines) == 8
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == before
    assert (out / "summary.csv").read_text() == summary


@pytest.mark.slow
def test_a_rerun_with_more_epochs_resumes_the_trials(tmp_path):
    (tmp_path / "s.toml").write_text('model = "vae"\nseeds = [3]\n[base]\nepochs = 1\ndataset = "mnist-sample"\n'
                                     'device = "cpu"\nhidden = 8\n')
    run_sweep(tmp_path / "s.toml", tmp_path / "out", SweepOptions(jobs=1), say=lambda line: None)
    (tmp_path / "s.toml").write_text((tmp_path / "s.toml").read_text().replace("epochs = 1", "epochs = 2"))
    lines: list[str] = []
    run_sweep(tmp_path / "s.toml", tmp_path / "out", SweepOptions(jobs=1), say=lines.append)
    assert lines[-1].startswith("sweep: 1 trained, 0 skipped")
    from mnistgen.runs import RunDir

    assert [r["epoch"] for r in RunDir(tmp_path / "out" / "trials" / "base" / "seed=3").read_metrics()] == [1, 2]


def test_a_gan_sweep_reports_its_last_epochs_losses(tmp_path):
    from mnistgen.runs import RunDir

    (tmp_path / "s.toml").write_text('model = "gan"\nseeds = [4]\n[base]\nepochs = 1\ndataset = "mnist-sample"\n'
                                     'device = "cpu"\nthreads = 1\n[grid]\nzdim = [16]\n')
    result = run_sweep(tmp_path / "s.toml", tmp_path / "out", SweepOptions(jobs=1), say=lambda line: None)
    last = RunDir(tmp_path / "out" / "trials" / "zdim=16" / "seed=4").read_metrics()[-1]
    assert result.results[0].numbers == {"g_loss": last["g_loss"], "d_loss": last["d_loss"]}
    row = read_rows(tmp_path / "out" / "summary.csv")[0]
    assert (float(row["g_loss_mean"]), row["g_loss_ci95"], row["n"]) == (last["g_loss"], "", "1")
    assert "g_loss: the last epoch" in (tmp_path / "out" / "summary.html").read_text()


def test_a_failing_trial_is_reported_and_the_others_finish(tmp_path, capsys):
    from mnistgen.cli import main

    (tmp_path / "s.toml").write_text(
        'model = "vae"\nseeds = [1]\n[base]\nepochs = 1\ndataset = "mnist-sample"\ndevice = "cpu"\nhidden = 8\n'
        '[[list]]\nprotocol = "full"\nvalidation_size = 4000\n[[list]]\nlr = 0.002\n')
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out"), "--jobs", "2"]) == 1
    captured = capsys.readouterr()
    assert "mnistgen: error: 1 of 2 trials failed" in captured.err
    # in the sweep file's words: its keys are the settings' keyword names
    assert "protocol=full,validation_size=4000/seed=1: FAILED: validation_size must be between 1 and 3999" \
        in captured.out
    rows = read_rows(tmp_path / "out" / "summary.csv")
    assert [(row["configuration"], row["n"], row["failed"]) for row in rows] == \
        [("lr=0.002", "1", "0"), ("protocol=full,validation_size=4000", "0", "1")]
    page = (tmp_path / "out" / "summary.html").read_text()
    assert "Failed trials (1)" in page and "validation_size must be between 1 and 3999" in page


def test_the_command_line(tmp_path, capsys):
    from mnistgen.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["sweep", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for text in ("SWEEP.toml", "--max-trials", "the sweep file (TOML):", 'model = "vae"', "seeds = [1, 2, 3]", "[base]",
                 "[grid]", "lr = [1e-3, 3e-3]", "# [[list]]", "batch_size for --batch-size"):  # the format itself
        assert text in help_text
    assert main(["sweep", str(tmp_path / "none.toml"), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip().endswith("none.toml: no such sweep file")
    (tmp_path / "s.toml").write_text('model = "vae"\n[grid]\nhidden = [0]\n')
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "configuration hidden=0: --hidden must be a positive integer, got 0" in error
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out"), "--cpus-per-trial", "0"]) == 2


def test_without_ray_the_ray_engine_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "s.toml").write_text('model = "vae"\n[base]\nepochs = 1\n')
    with pytest.raises(MnistgenError, match=r'^--engine ray needs Ray, which is not installed: pip install '
                                            r'"mnistgen\[ray\]"$'):
        run_sweep(tmp_path / "s.toml", tmp_path / "out", SweepOptions(engine="ray"), say=lambda line: None)


# --------------------------------------------------------------------------- faults: signals, kills, a second sweep

LONG = """\
model = "vae"
seeds = [1, 2]
[base]
epochs = 100000
dataset = "mnist-sample"
device = "cpu"
threads = 1
hidden = 8
[grid]
lr = [1e-3, 2e-3]
"""  # 4 trials of an hour each; the first two start first (jobs 2), the others wait


def default_sigint() -> None:
    """In the child before exec: Ctrl-C's default action, which a shell's background job (`cmd &`) would have ignored
    (and Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a living process (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def sweep_process(folder: Path, text: str) -> Iterator[tuple[subprocess.Popen, set[int]]]:
    """``mnistgen sweep`` of ``text`` into folder/out with 2 jobs, in a real process (its output in folder/stdout and
    folder/stderr); yields it and the set of the processes seen below it, all killed at the end (orphans too)."""
    (folder / "s.toml").write_text(text)
    with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "mnistgen", "sweep", str(folder / "s.toml"), "--out",
                                    str(folder / "out"), "--jobs", "2"], stdout=out, stderr=err,
                                   preexec_fn=default_sigint)
    seen = {process.pid}
    try:
        yield process, seen
    finally:
        if process.poll() is None:
            seen |= descendants(process.pid)
        for pid in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def worker_training(trial: Path, process: subprocess.Popen, seen: set[int]) -> int:
    """The pid of the worker process of the sweep ``process`` that trains ``trial``, once it trains it (the trial's
    lock names the worker, and its first checkpoint is written)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, (trial.parents[3] / "stderr").read_text()
        seen |= descendants(process.pid)
        with contextlib.suppress(OSError):
            holder = (trial / ".lock").read_text().strip()
            if holder.isdigit() and int(holder) in seen and alive(int(holder)) and (trial / "checkpoint.pt").is_file():
                return int(holder)
        time.sleep(0.1)
    pytest.fail(f"no worker trained {trial} within 300 s")


def epochs_recorded(trial: Path) -> int:
    from mnistgen.runs import RunDir

    return len(RunDir(trial).read_metrics(say=lambda line: None))


@pytest.mark.slow
def test_a_killed_worker_fails_its_own_trial_alone_and_a_new_worker_trains_the_rest(tmp_path):
    text = ('model = "vae"\nseeds = [1]\n[base]\ndataset = "mnist-sample"\ndevice = "cpu"\nthreads = 1\nhidden = 8\n'
            + "".join(f"[[list]]\nepochs = {epochs}\nlr = {lr}\n"
                      for epochs, lr in ((100000, 1e-3), (1, 2e-3), (1, 3e-3), (1, 4e-3))))  # the first: an hour
    with sweep_process(tmp_path, text) as (process, seen):
        os.kill(worker_training(tmp_path / "out" / "trials" / "epochs=100000,lr=0.001" / "seed=1", process, seen),
                signal.SIGKILL)
        assert process.wait(timeout=300) == 1
    lines = (tmp_path / "stdout").read_text().splitlines()
    assert "  epochs=100000,lr=0.001/seed=1: FAILED: its worker process was killed by signal SIGKILL" in lines, lines
    assert sum(": trained in " in line for line in lines) == 3, lines
    assert lines[-1].startswith("sweep: 3 trained, 0 skipped (finished before), 1 failed"), lines
    rows = {row["configuration"]: (row["n"], row["failed"]) for row in read_rows(tmp_path / "out" / "summary.csv")}
    assert rows == {"epochs=100000,lr=0.001": ("0", "1"), "epochs=1,lr=0.002": ("1", "0"),
                    "epochs=1,lr=0.003": ("1", "0"), "epochs=1,lr=0.004": ("1", "0")}
    assert "killed by signal SIGKILL" in (tmp_path / "out" / "summary.html").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_every_trial_at_its_next_step_and_a_rerun_resumes_them(tmp_path):
    out = tmp_path / "out"
    started = [out / "trials" / "lr=0.001" / f"seed={seed}" for seed in (1, 2)]
    with sweep_process(tmp_path, LONG) as (process, seen):
        for trial in started:
            worker_training(trial, process, seen)
        process.send_signal(signal.SIGINT)
        try:  # a guard against a hang, not a timing: stopped, it ends in seconds; a trial going on trains an hour
            code = process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("the sweep went on training after SIGINT")
    assert code == 130
    assert [line for line in (tmp_path / "stderr").read_text().splitlines()  # the trials' notes aside (no compiler)
            if not line.startswith("mnistgen: note: ")] == [
        "mnistgen: interrupted: 2 trial(s) stopped and saved, 2 not started; run the same command again to resume them"]
    assert sorted(out.glob("trials/*/seed=*")) == started  # the queued trials did not start
    first_lines = {trial: (trial / "metrics.jsonl").read_text().splitlines()[0] for trial in started}
    epochs = max(epochs_recorded(trial) for trial in started) + 1
    (tmp_path / "s.toml").write_text(LONG.replace("epochs = 100000", f"epochs = {epochs}"))
    lines: list[str] = []
    run_sweep(tmp_path / "s.toml", out, SweepOptions(jobs=2), say=lines.append)
    assert lines[-1].startswith("sweep: 4 trained, 0 skipped (finished before), 0 failed"), lines
    for trial, first in first_lines.items():  # resumed, not started anew (that would rewrite the first epoch)
        assert (trial / "metrics.jsonl").read_text().splitlines()[0] == first
        assert epochs_recorded(trial) == epochs


@pytest.mark.slow
def test_the_workers_die_with_a_killed_sweep_and_a_rerun_resumes_their_trials(tmp_path):
    out = tmp_path / "out"
    started = [out / "trials" / "lr=0.001" / f"seed={seed}" for seed in (1, 2)]
    with sweep_process(tmp_path, LONG) as (process, seen):
        workers = [worker_training(trial, process, seen) for trial in started]
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], "the workers outlived the sweep"
    epochs = max(epochs_recorded(trial) for trial in started) + 1
    (tmp_path / "s.toml").write_text(LONG.replace("epochs = 100000", f"epochs = {epochs}"))
    lines: list[str] = []
    run_sweep(tmp_path / "s.toml", out, SweepOptions(jobs=2), say=lines.append)
    assert lines[-1].startswith("sweep: 4 trained, 0 skipped (finished before), 0 failed"), lines


@pytest.mark.slow
def test_a_second_sweep_into_the_same_folder_is_refused_in_one_line(tmp_path, capsys):
    from mnistgen.cli import main

    out = tmp_path / "out"
    with sweep_process(tmp_path, LONG) as (process, seen):
        worker_training(out / "trials" / "lr=0.001" / "seed=1", process, seen)
        (tmp_path / "short.toml").write_text(LONG.replace("epochs = 100000", "epochs = 1"))
        assert main(["sweep", str(tmp_path / "short.toml"), "--out", str(out), "--jobs", "2"]) == 1
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", f"mnistgen: error: {out.resolve()} is in use by another mnistgen "
                                                    f"process (pid {process.pid}); wait for it to end, or choose "
                                                    "another --out\n")
        assert process.poll() is None and not (out / "summary.csv").exists()
        assert not (out / "trials" / "lr=0.002").exists()


# --------------------------------------------------------------------------- Ray


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6} (hex, in the kernel's byte order)."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    address = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return address.ipv4_mapped or address


def sockets_of(pids: set[int]) -> list[tuple[str, str, str, str]]:
    """(inode, local address, remote address, who: "table pid command") of every TCP and UDP socket the processes
    ``pids`` hold; who names the socket in a failure's message."""
    inodes = {}
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:100]
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = f"{pid} {command}"
        except OSError:
            continue
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                found.append((fields[9], *(str(_address(f.split(":")[0])) for f in fields[1:3]),
                              f"{table} {inodes[fields[9]]}"))
    return found


@pytest.mark.slow
def test_the_same_sweep_through_a_local_ray_instance_on_127_0_0_1_gives_the_same_summary(
        local_sweep, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    # the variables the engine sets for its private instance, restored after the test
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    (tmp_path / "s.toml").write_text(GRID_2X2)
    before = descendants(os.getpid())  # multiprocessing's resource tracker, started by the local engine, stays
    seen: set[tuple[str, str, str]] = set()
    commands: set[str] = set()
    done = threading.Event()

    def watch():  # every socket and command line of every process below this one, while the sweep runs
        while not done.is_set():
            pids = descendants(os.getpid())
            seen.update(sockets_of(pids))
            for pid in pids:
                try:
                    commands.add(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "))
                except OSError:
                    continue
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    lines: list[str] = []
    start = time.perf_counter()
    try:
        result = run_sweep(tmp_path / "s.toml", tmp_path / "out", SweepOptions(engine="ray", jobs=2),
                           say=lines.append)
    finally:
        done.set()
        watcher.join()
    seconds = time.perf_counter() - start
    assert not result.failed, result.failed
    assert lines[1].startswith("ray: 1 node(s) (127.0.0.1), GCS at 127.0.0.1:"), lines[1]
    assert lines[-1].startswith("sweep: 8 trained, 0 skipped"), lines
    assert (tmp_path / "out" / "summary.csv").read_text() == (local_sweep[0] / "summary.csv").read_text()
    # no API server: its usage report asks 169.254.169.254 from the interface's address, for a few ms, which the
    # watcher sees about once in 20 runs
    api_servers = [command for command in commands if "ray/dashboard/dashboard.py" in command]
    assert api_servers == [], api_servers
    # every socket of Ray's processes was bound to and talked with 127.0.0.1 only
    loopback = {"127.0.0.1", "::1"}
    assert sum(remote in loopback for _, _, remote, _ in seen) >= 4, seen  # the watcher did see Ray's connections
    assert {local for _, local, _, _ in seen} <= loopback, [s for s in seen if s[1] not in loopback]
    assert {remote for _, _, remote, _ in seen} <= loopback | {"0.0.0.0", "::"}, \
        [s for s in seen if s[2] not in loopback | {"0.0.0.0", "::"}]
    # ray.shutdown() stopped every process it started
    deadline = time.monotonic() + 10
    while descendants(os.getpid()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in descendants(os.getpid()) - before}
    assert left == {}, left
    print(f"ray sweep: {seconds:.1f} s, local sweep: {local_sweep[2]:.1f} s")
