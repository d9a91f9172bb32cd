"""Arguments are checked against their valid ranges; Ctrl-C and SIGTERM leave a checkpoint the run resumes from exactly;
benchmark.py never reuses a run made with other settings, and stopping it stops its runs."""
import dataclasses
import glob
import math
import os
import signal
import subprocess
import sys
import time
import typing

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import benchmark  # noqa: E402
from test_algorithms import SCRIPTS, load_results, resolved, run, tiny  # noqa: E402


def numeric(field) -> bool:
    kinds = typing.get_args(field.type) or (field.type,)
    return any(kind in (int, float) for kind in kinds) and field.type is not bool


def bad_value(interval: str):
    """A value just outside an interval such as '[1, inf)' or '(0, 1]'."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    if math.isfinite(low):
        return low - 1 if interval[0] == "[" else low
    return high + 1 if interval[-1] == "]" else high


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_argument_has_a_range_and_a_value_outside_it_is_refused(script, monkeypatch):
    module = __import__(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py"])
    module.check_args(resolved(module))  # the defaults of every family pass
    for env in ("cheetah-vel", "hopper-params", "humanoid-dir"):
        module.check_args(resolved(module, env=env))
    for field in dataclasses.fields(module.Args):
        if not numeric(field):
            continue
        assert field.name in module.ARG_RANGES, f"{script}.py: --{field.name} has no valid range"
        interval = module.ARG_RANGES[field.name]
        value = bad_value(interval)
        if int in (typing.get_args(field.type) or (field.type,)):
            value = int(value)
        with pytest.raises(SystemExit) as refused:
            module.check_args(module.Args(**{field.name: value}))
        assert refused.value.code == 2, (script, field.name, value)
        if float in (typing.get_args(field.type) or (field.type,)):
            with pytest.raises(SystemExit):
                module.check_args(module.Args(**{field.name: float("nan")}))
    assert set(module.ARG_RANGES) <= {f.name for f in dataclasses.fields(module.Args)}  # no range of a removed option


@pytest.mark.parametrize("script, flags", [
    ("select_omrl", ["--proximal-episodes", "0"]), ("gentle", ["--relabel-every", "0"]),
    ("gentle", ["--pseudo-fraction", "2"]), ("gentle", ["--ensemble-size", "0"]), ("gentle", ["--one-shot-steps", "0"]),
    ("csro", ["--non-prior-steps", "-10"]), ("metanf", ["--seed", "-1"]), ("unicorn", ["--policy-frequency", "0"]),
])
def test_the_arguments_that_crashed_are_one_line_before_any_run_folder(script, flags, tmp_path):
    result = run(script, tmp_path, *flags, "--data-dir", str(tmp_path), check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {flags[0]} ") and ": must lie in " in result.stderr
    assert not (tmp_path / "runs").exists()


def wait_for(predicate, timeout=120):
    start = time.time()
    while not predicate():
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.05)


def long_tiny(script, steps):
    flags = list(tiny(script))
    for name, value in (("--total-steps", steps), ("--eval-every", steps // 2), ("--log-every", 10)):
        flags[flags.index(name) + 1] = str(value)
    return flags


def test_sigint_saves_a_checkpoint_from_which_the_run_resumes_to_the_uninterrupted_result(data_dir, tmp_path):
    flags = [*long_tiny("unicorn", 300), "--data-dir", data_dir, "--checkpoint-every", "100000"]
    (tmp_path / "whole").mkdir()
    progress = [line for line in run("unicorn", tmp_path / "whole", *flags).stdout.splitlines() if "updates/s | ETA" in line]
    # the time left counts the evaluations still to come once one has been timed (the first is at step 150)
    assert all(line.endswith(" + evaluations") == (int(line.split()[1].split("/")[0]) <= 150) for line in progress)
    assert len(progress) == 30 and all(line.count("updates/s") == 1 for line in progress)
    (whole,) = glob.glob(str(tmp_path / "whole" / "runs" / "*"))
    cut = tmp_path / "cut"
    cut.mkdir()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "unicorn.py"), *flags], cwd=cut,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # past the first logged steps, before the first evaluation at 150
        if line.startswith("step 20/300"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    (line,) = [line for line in out.splitlines() if line.startswith("stopped by SIGINT")]
    assert "checkpoint saved; resume with: python " in line and "unicorn.py --env point-robot --checkpoint " in line
    (run_dir,) = glob.glob(str(cut / "runs" / "*"))
    import torch

    step = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)["step"]
    assert 20 <= step < 150 and not os.path.exists(os.path.join(run_dir, "results.json"))
    run("unicorn", cut, "--checkpoint", os.path.join(run_dir, "checkpoint.pt"), "--data-dir", data_dir)
    resumed, uninterrupted = load_results(run_dir), load_results(whole)
    for protocol in ("zero_shot", "few_shot"):
        assert resumed[protocol] == uninterrupted[protocol]
    # a finished run is not resumed: it says so, exits non-zero and makes no run folder
    again = run("unicorn", tmp_path, "--checkpoint", os.path.join(run_dir, "checkpoint.pt"), "--data-dir", data_dir,
                check=False)
    assert again.returncode == 2 and "its run has finished its 300 steps" in again.stderr
    assert not (tmp_path / "runs").exists()


def test_checkpoint_every_saves_between_evaluations_and_gentle_resumes_between_relabels(data_dir, tmp_path):
    flags = [*long_tiny("gentle", 60), "--data-dir", data_dir, "--relabel-every", "20"]
    (tmp_path / "whole").mkdir()
    run("gentle", tmp_path / "whole", *flags)
    (whole,) = glob.glob(str(tmp_path / "whole" / "runs" / "*"))
    short = list(flags)
    short[short.index("--total-steps") + 1] = "50"  # cut at a checkpoint (step 50) between two relabels (40, 60)
    run("gentle", tmp_path, *short, "--checkpoint-every", "25")
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "*"))
    import torch

    path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["step"] == 50 and checkpoint["agent"]["pseudo"] is not None
    checkpoint["args"]["total_steps"] = 60  # as if a 60-step run had stopped after its step-50 checkpoint
    torch.save(checkpoint, path)
    run("gentle", tmp_path, "--checkpoint", path, "--data-dir", data_dir)
    resumed, uninterrupted = load_results(run_dir), load_results(whole)
    assert resumed["step"] == 60
    for protocol in ("zero_shot", "few_shot", "one_shot"):
        assert resumed[protocol] == uninterrupted[protocol]


def test_a_grid_never_reuses_a_run_made_with_other_settings(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small = ["--n-tasks", "4", "--n-train", "2", "--meta-batch-size", "2", "--batch-size", "32", "--eval-episodes", "1",
             "--data-dir", data_dir]
    run("csro", tmp_path, "--total-steps", "20", "--eval-every", "10", *small)  # expert data, csro's defaults
    (expert_run,) = glob.glob(str(tmp_path / "runs" / "point-robot__csro__0__*"))
    extra = " ".join(["--total-steps 20 --eval-every 10", *small])
    benchmark.run_grid(benchmark.Run(algos=["csro"], seeds=[0], extra=extra))
    assert f"skip (finished in runs/{os.path.basename(expert_run)})" in capsys.readouterr().out
    for flags, named in ((" --behavior mixed", "--behavior 'expert' (the command: 'mixed')"),
                         (" --gamma 2", "--gamma 0.9 (the command: 2.0)")):
        benchmark.run_grid(benchmark.Run(algos=["csro"], seeds=[0], extra=extra + flags))
        out = capsys.readouterr().out
        assert "skip" not in out and f"not reused: runs/{os.path.basename(expert_run)} was made with other settings" in out
        assert named in out and "# 1 commands" in out
    # a column holds runs of one setting: another seed trained with --gamma 0.5 under the same name is refused
    run("csro", tmp_path, "--total-steps", "20", "--eval-every", "10", "--seed", "1", "--gamma", "0.5", *small)
    with pytest.raises(SystemExit, match=r"column csro were made with different settings or data \(--gamma: seed 0 0.9, "
                                         r"seed 1 0.5\)"):
        benchmark.report(benchmark.Report(runs_dir="runs", out_dir=str(tmp_path / "page"), plots=False))


def test_stopping_a_grid_stops_its_runs_which_save_and_resume(data_dir, tmp_path):
    extra = " ".join([*long_tiny("focal", 4000)[2:], "--data-dir", data_dir])
    bench = [sys.executable, os.path.join(ROOT, "benchmark.py"), "run", "--algos", "focal", "--seeds", "0", "--workers", "1",
             "--progress-every", "0.5", f"--extra={extra}"]
    grid = subprocess.Popen(bench, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in grid.stdout:
        lines.append(line)
        if line.startswith("point-robot__focal__0: step "):  # a progress line, relayed from the run's log
            break
    assert any(line.startswith("start point-robot__focal__0 (log runs/logs/point-robot__focal__0.log)") for line in lines)
    assert " updates/s | ETA " in lines[-1]
    grid.send_signal(signal.SIGTERM)
    out = "".join(lines) + grid.communicate(timeout=120)[0]
    assert grid.returncode == 143 and "SIGTERM: stopping 1 run(s)" in out, out
    log = (tmp_path / "runs" / "logs" / "point-robot__focal__0.log").read_text()
    assert "stopped by SIGTERM at step" in log
    assert subprocess.run(["pgrep", "-f", f"focal.py.*{data_dir}"], capture_output=True).returncode == 1  # none left
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__focal__0__*"))
    assert os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    dry_run = list(bench)
    dry_run[dry_run.index("--workers") + 1] = "0"
    again = subprocess.run(dry_run, cwd=tmp_path, capture_output=True, text=True)
    assert f"resume (interrupted in runs/{os.path.basename(run_dir)})" in again.stdout, again.stdout + again.stderr
