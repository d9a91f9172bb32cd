"""The scripts under results/ that turn logs into the numbers of a results page."""
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAC_CURVE = os.path.join(ROOT, "results", "tools", "sac_curve.py")
REPLAY = os.path.join(ROOT, "results", "tools", "replay_fingerprint.py")


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_episodes(folder, returns_of_task, first_step, last_step, episode_steps=200):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(folder)
    for end in range(first_step + episode_steps, last_step + 1, episode_steps):
        for task, returns in returns_of_task.items():
            writer.add_scalar(f"charts/task_{task:02d}/episodic_return", returns(end), end - 1)  # logged 0-based
    writer.close()


def test_sac_budget_rule_on_a_cut_and_resumed_run(tmp_path):
    sac_curve = load(SAC_CURVE)
    # task 9 is flat from 30k steps on; task 13 is 4% below its final level from 60k to 80k steps, then at it.
    # The run was cut at 70k steps after its state was saved at 55k (the cut run's episodes past 55k are garbage here),
    # and resumed from 55k: the resumed folder's timestamp 1000 sorts after 999 only as a number.
    task_9 = lambda end: -100.0 if end <= 30_000 else 0.0
    task_13 = lambda end: -100.0 if end <= 60_000 else (-4.0 if end <= 80_000 else 0.0)
    garbage = lambda end: -999.0 if end > 55_000 else min(task_9(end), task_13(end))
    write_episodes(tmp_path / "cheetah-vel__collect_data_expert__0__999", {9: task_9, 13: garbage}, 0, 55_000)
    write_episodes(tmp_path / "cheetah-vel__collect_data_expert__0__999", {9: garbage, 13: garbage}, 55_000, 70_000)
    write_episodes(tmp_path / "cheetah-vel__collect_data_expert__0__1000", {9: task_9, 13: task_13}, 55_000, 100_000)
    curves = sac_curve.read_curves(str(tmp_path))
    assert sorted(curves) == [9, 13]
    assert len(curves[9]) == 500 and curves[13][69_999] == -4.0  # the resumed run's episodes replace the cut run's
    assert sac_curve.window_mean(curves[13], 10_000, 10_000) == -100.0  # 50 episodes that end at steps 200 .. 10 000
    assert sac_curve.window_mean(curves[13], 75_000, 10_000) == -4.0
    budget, rows = sac_curve.choose_budget(curves, 100_000, 10_000, 25_000, 0.05)
    # 25k: both at -100 (100% to come); 50k: task 9 at 0 but task 13 at -100; 75k: task 13 at -4, 4% <= 5% to come
    assert budget == 75_000
    assert [(end, passes) for end, _, _, passes in rows] == [(25_000, False), (50_000, False), (75_000, True),
                                                            (100_000, True)]
    assert rows[2][2][13] == pytest.approx(0.04)
    assert sac_curve.choose_budget(curves, 100_000, 10_000, 25_000, 0.03)[0] == 100_000  # 4% > 3%: only T passes


def test_sac_curve_reads_collect_data_events(data_dir, tmp_path):
    """On the events collect_data.py itself wrote (the 4-task fixture, 300 SAC steps, 20-step episodes)."""
    runs = os.path.join(data_dir, "runs")
    command = [sys.executable, SAC_CURVE, "--runs-dir", runs, "--total-steps", "300", "--window", "100", "--grid", "100",
               "--plot", str(tmp_path / "curve.png")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| B | task 0: R(B) (still to come) | task 1:") and len(rows) == 1 + 1 + 3  # head, 100, 3 B
    assert rows[-1].startswith("| 300 |")
    assert os.path.getsize(tmp_path / "curve.png") > 0
    empty = subprocess.run([sys.executable, SAC_CURVE, "--runs-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert empty.returncode != 0 and "no charts/task_XX/episodic_return events" in empty.stderr


TARGET_PAGE = """# point-robot

## zero-shot

| task set | focal | metanf |
|---|---|---|
| train | -10.42 ± 1.27 (n=3) | -11.75 ± 1.29 (n=5) |
| test | -16.77 ± 0.98 (n=3) | -16.55 ± 1.43 (n=5) |
| train (paper) | -12.11 ± 0.88 | -10.11 ± 0.76 |

| seed | focal | metanf |
|---|---|---|
| 0 | -9.24 / -15.51 | -12.94 / -15.80 |
| 3 | — | -12.99 / -19.16 |

## Runtime

| algorithm | seeds | gradient steps | wall time (min, mean) | updates/s (mean) |
|---|---|---|---|---|
| focal | 3 | 200,000 | 90.7 | 36.8 |
| metanf | 5 | 200,000 | 180.8 | 18.4 |

Machine: here.
"""

SOURCE_PAGE = """# point-robot

## zero-shot

| task set | metanf | metanf-no-selection_eval |
|---|---|---|
| gradient steps, data | 200,000, 3889cba0e12c7227 | 200,000, 3889cba0e12c7227 |
| train | -11.00 ± 1.00 (n=5) | -12.00 ± 1.00 (n=5) |
| test | -16.00 ± 1.00 (n=5) | -17.00 ± 1.00 (n=5) |
| train (paper: 5 seeds, 200,000 steps, its own data) | -10.11 ± 0.76 | -12.40 ± 0.59 |
| test (paper: 5 seeds, 200,000 steps, its own data) | -14.53 ± 0.81 | -17.38 ± 1.21 |

| seed | metanf | metanf-no-selection_eval |
|---|---|---|
| 0 | -11.00 / -16.00 | -12.00 / -17.00 |
| 3 | -10.50 / -15.50 | -11.50 / -16.50 |
| 4 | -11.50 / -16.50 | -12.50 / -17.50 |

## non-prior

| task set | csro | metanf |
|---|---|---|
| gradient steps, data | 200,000, 3889cba0e12c7227 | 200,000, 3889cba0e12c7227 |
| train | -10.82 ± 0.63 (n=5) | — |

## one-shot

| task set | metanf |
|---|---|
| train | -1.00 ± 0.00 (n=5) |

## Runtime

| algorithm | seeds | gradient steps | wall time (min, mean) | updates/s (mean) |
|---|---|---|---|---|
| metanf | 5 | 200,000 | 185.0 | 18.0 |
| metanf-no-selection_eval | 5 | 200,000 | evaluation of saved checkpoints | — |
"""


def test_merge_columns_into_a_page_whose_runs_are_gone():
    merge_columns = load(os.path.join(ROOT, "results", "tools", "merge_columns.py"))
    merged = merge_columns.merge(TARGET_PAGE, SOURCE_PAGE, [("metanf", "metanf (sample)")], [("metanf", "metanf (zero)")],
                                 "new.md")
    assert merged == """# point-robot

## zero-shot

| task set | focal | metanf (zero) | metanf (sample) |
|---|---|---|---|
| train | -10.42 ± 1.27 (n=3) | -11.75 ± 1.29 (n=5) | -11.00 ± 1.00 (n=5) |
| test | -16.77 ± 0.98 (n=3) | -16.55 ± 1.43 (n=5) | -16.00 ± 1.00 (n=5) |
| train (paper) | -12.11 ± 0.88 | -10.11 ± 0.76 | -10.11 ± 0.76 |
| test (paper) | — | — | -14.53 ± 0.81 |

| seed | focal | metanf (zero) | metanf (sample) |
|---|---|---|---|
| 0 | -9.24 / -15.51 | -12.94 / -15.80 | -11.00 / -16.00 |
| 3 | — | -12.99 / -19.16 | -10.50 / -15.50 |
| 4 | — | — | -11.50 / -16.50 |

## one-shot

(Only the columns added from new.md.)

| task set | metanf (sample) |
|---|---|
| train | -1.00 ± 0.00 (n=5) |

## Runtime

| algorithm | seeds | gradient steps | wall time (min, mean) | updates/s (mean) |
|---|---|---|---|---|
| focal | 3 | 200,000 | 90.7 | 36.8 |
| metanf (zero) | 5 | 200,000 | 180.8 | 18.4 |
| metanf (sample) | 5 | 200,000 | 185.0 | 18.0 |

Machine: here.
"""
    with pytest.raises(SystemExit, match="not a column of any table"):
        merge_columns.merge(TARGET_PAGE, SOURCE_PAGE.split("## Runtime")[0], [("metnaf", "m")])
    without_runtime = merge_columns.merge(TARGET_PAGE.split("## Runtime")[0], SOURCE_PAGE, [("metanf", "m")])
    assert without_runtime.rstrip().endswith("| train | -1.00 ± 0.00 (n=5) |")  # the new section at the end
    with pytest.raises(SystemExit, match="not in the Runtime table"):
        merge_columns.merge(TARGET_PAGE, SOURCE_PAGE.replace("| metanf | 5 |", "| other | 5 |"), [("metanf", "m")])


def test_replay_fingerprint_backfills_only_runs_it_reproduces(data_dir, tmp_path):
    """An archived csro run and an evaluation of its checkpoint, both without the data fingerprint (as runs made before
    results.json recorded it), and a copy of the run whose args.json points at data that differ in one reward: the
    replay writes the fingerprint into the first two and leaves the third as it was."""
    import numpy as np
    from test_algorithms import load_results, run, tiny

    run("csro", tmp_path, *tiny("csro"), "--total-steps", "20", "--log-every", "10", "--data-dir", data_dir)
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__csro__0__*"))
    run("csro", tmp_path, "--eval-only", "--checkpoint", os.path.join(run_dir, "checkpoint.pt"), "--data-dir", data_dir,
        "--eval-episodes", "1")
    (eval_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__csro_eval__0__*"))
    fingerprint = load_results(run_dir)["data_fingerprint"]
    other_data = tmp_path / "other_data"
    shutil.copytree(data_dir, other_data, ignore=shutil.ignore_patterns("runs"))
    task = other_data / "point-robot" / "expert" / "task_00.npz"
    arrays = dict(np.load(task))
    arrays["rewards"][5] += 0.5
    np.savez(task, **arrays)

    archive = tmp_path / "archive"
    for source, name in ((run_dir, os.path.basename(run_dir)), (eval_dir, os.path.basename(eval_dir)),
                         (run_dir, "point-robot__csro__1__1")):
        target = archive / name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.pt"))
        results = load_results(str(target))
        del results["data_fingerprint"]
        (target / "results.json").write_text(json.dumps(results))
    settings = json.loads((archive / "point-robot__csro__1__1" / "args.json").read_text())
    (archive / "point-robot__csro__1__1" / "args.json").write_text(json.dumps({**settings, "data_dir": str(other_data)}))

    command = [sys.executable, REPLAY, "--runs-dir", str(archive), "--steps", "10", "--commit", "."]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "point-robot__csro__1__1: not reproduced" in result.stdout
    for name in (os.path.basename(run_dir), os.path.basename(eval_dir)):
        results = load_results(str(archive / name))
        assert results["data_fingerprint"] == fingerprint
        assert "losses logged at step 10 are bit-identical" in results["data_fingerprint_replay"]
    assert "data_fingerprint" not in load_results(str(archive / "point-robot__csro__1__1"))
