import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import benchmark  # noqa: E402


FAKE_DATA = "fa4edada7a000000"  # the fingerprint every command's data has in these tests, whatever lies in data/


@pytest.fixture(autouse=True)
def hermetic_data(monkeypatch):
    """The data checks of `run` and `report` see FAKE_DATA (tests/test_interruptions.py checks them on real data)."""
    monkeypatch.setattr(benchmark, "data_fingerprint", lambda settings: FAKE_DATA)


def write_run(runs_dir, env, exp, seed, stamp, zero_train, zero_test, step=100, total=100, checkpoint=None, online=(),
              data=None, flags=()):
    """A run's results.json and args.json as its script writes them: args.json with every argument of the command
    `{script}.py --env ENV --seed SEED --total-steps TOTAL FLAGS` (the script: exp's first word); the data fingerprint in
    results.json is `data`, or else that of the data such a command finds (none: not recorded)."""
    run_dir = os.path.join(runs_dir, f"{env}__{exp}__{seed}__{stamp}")
    os.makedirs(run_dir)
    results = {"algorithm": exp.split("-")[0], "env": env, "seed": seed, "step": step, "total_steps": total}
    script = os.path.join(ROOT, exp.split("-")[0].removesuffix("_eval") + ".py")
    settings, _ = benchmark.command_settings([sys.executable, script, "--env", env, "--seed", str(seed), "--exp-name",
                                              exp, "--total-steps", str(total), *flags])
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(settings, f)
    results["data_fingerprint"] = data or FAKE_DATA
    if checkpoint:  # an --eval-only run
        results["checkpoint"] = checkpoint
    else:
        results.update(wall_time=60.0 * (seed + 1), updates_per_second=10.0 * (seed + 1))
    for protocol, scale in (("zero_shot", 1.0), ("few_shot", 2.0), *((p, 3.0) for p in online)):
        results[protocol] = {"train": {"mean": scale * zero_train, "per_task": {}},
                             "test": {"mean": scale * zero_test, "per_task": {}}}
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f)
    return run_dir


def test_grid_expansion_and_exp_names(monkeypatch):
    monkeypatch.chdir(ROOT)
    args = benchmark.Run(algos=["focal", "metanf --no-flow --no-selection"], envs=["point-robot", "ant-dir"], seeds=[0, 3],
                         extra="--total-steps 500 --device cpu")
    cells = benchmark.grid(args)
    assert len(cells) == 8
    assert cells[0]["argv"][1:] == ["focal.py", "--env", "point-robot", "--seed", "0", "--exp-name", "focal",
                                    "--total-steps", "500", "--device", "cpu"]
    last = cells[-1]
    assert (last["env"], last["seed"], last["exp_name"]) == ("ant-dir", 3, "metanf-no-flow-no-selection")
    assert last["argv"][1:] == ["metanf.py", "--env", "ant-dir", "--seed", "3", "--exp-name", "metanf-no-flow-no-selection",
                                "--no-flow", "--no-selection", "--total-steps", "500", "--device", "cpu"]
    with pytest.raises(SystemExit, match="no algorithm script"):
        benchmark.grid(benchmark.Run(algos=["dqn"]))


def test_exp_suffix_keeps_another_task_sets_runs_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = str(tmp_path)
    write_run(runs, "point-robot", "metanf", 0, 5, -10.0, -15.0, total=20000, step=20000)  # the default task set's run
    args = benchmark.Run(algos=["metanf"], seeds=[0], exp_suffix="-dev7", runs_dir=runs,
                         extra="--task-seed 7 --total-steps 20000")
    (cell,) = benchmark.grid(args)
    assert cell["exp_name"] == "metanf-dev7" and cell["argv"][cell["argv"].index("--exp-name") + 1] == "metanf-dev7"
    assert benchmark.finished(runs, cell) is None  # not taken for the default task set's finished run
    (evaluation,) = benchmark.grid(benchmark.Run(algos=["metanf --act sample"], seeds=[0], exp_suffix="-dev7",
                                                 runs_dir=runs, eval_of="metanf-dev7", extra="--total-steps 20000"))
    assert evaluation["exp_name"] == "metanf-act-sample-dev7_eval" and evaluation["argv"] is None  # nothing to evaluate yet


def test_eval_of_evaluates_the_newest_final_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    runs = str(tmp_path)
    write_run(runs, "point-robot", "metanf", 0, 1, -10, -15)
    newest = write_run(runs, "point-robot", "metanf", 0, 2, -10, -15)
    write_run(runs, "point-robot", "metanf", 1, 3, -10, -15, step=50)  # unfinished: nothing to evaluate
    args = benchmark.Run(algos=["metanf --no-selection"], seeds=[0, 1], runs_dir=runs, eval_of="metanf")
    cell, missing = benchmark.grid(args)
    assert cell["argv"] is None  # the source runs are of 100 steps, not of metanf.py's default budget
    args.extra = "--total-steps 100"
    cell, missing = benchmark.grid(args)
    assert cell["exp_name"] == "metanf-no-selection_eval"
    assert cell["argv"][-6:] == ["--no-selection", "--total-steps", "100", "--eval-only", "--checkpoint",
                                 os.path.join(newest, "checkpoint.pt")]
    assert missing["argv"] is None and "no finished metanf run of point-robot, seed 1 at 100 steps" in missing["missing"]
    benchmark.run_grid(args)
    out = capsys.readouterr().out
    assert "cannot run: no finished metanf run of point-robot, seed 1 at 100 steps" in out and "# 1 commands" in out


def test_finished_runs_are_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    runs = str(tmp_path)
    write_run(runs, "point-robot", "focal", 0, 1, -10, -15)  # finished
    stopped = write_run(runs, "point-robot", "focal", 1, 1, -10, -15, step=50)  # interrupted after its step-50 checkpoint
    open(os.path.join(stopped, "checkpoint.pt"), "w").close()
    write_run(runs, "point-robot", "unicorn", 0, 1, -10, -15, total=100)  # finished (a run of 200 steps would not be)
    write_run(runs, "point-robot", "unicorn", 1, 1, -10, -15, step=50)  # interrupted before any checkpoint: starts again
    args = benchmark.Run(algos=["focal", "unicorn"], seeds=[0, 1], runs_dir=runs, extra="--total-steps 100")
    benchmark.run_grid(args)
    out = capsys.readouterr().out
    assert out.count("skip (finished") == 2 and "# 2 commands" in out
    resumed = [line for line in out.splitlines() if line.startswith("resume (interrupted in")]
    assert len(resumed) == 1
    assert resumed[0].endswith(f"--seed 1 --exp-name focal --total-steps 100 --checkpoint {stopped}/checkpoint.pt")
    args.extra = "--total-steps 200"
    benchmark.run_grid(args)
    assert "skip" not in capsys.readouterr().out


def test_a_cell_running_in_another_process_is_left_alone(tmp_path, monkeypatch, capsys):
    import fcntl

    monkeypatch.chdir(ROOT)
    runs = str(tmp_path)
    stopped = write_run(runs, "point-robot", "focal", 0, 1, -10, -15, step=50)  # looks interrupted, but is still training
    open(os.path.join(stopped, "checkpoint.pt"), "w").close()
    os.makedirs(os.path.join(runs, "logs"))
    args = benchmark.Run(algos=["focal"], seeds=[0], runs_dir=runs, extra="--total-steps 100", workers=1)
    with open(os.path.join(runs, "logs", "point-robot__focal__0.log"), "a") as log:
        fcntl.flock(log, fcntl.LOCK_EX)  # what the benchmark process running it holds
        benchmark.run_grid(args)
        out = capsys.readouterr().out
        assert "skip (running in another benchmark process" in out and "resume" not in out and "0 of 0 runs" in out
    benchmark.run_grid(benchmark.Run(algos=["focal"], seeds=[0], runs_dir=runs, extra="--total-steps 100"))
    assert "resume (interrupted in" in capsys.readouterr().out


def test_a_cell_finished_by_another_grid_after_planning_is_not_run_again(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    runs = str(tmp_path)
    answers = iter([None, None, "runs/point-robot__focal__0__2"])  # planning: neither finished nor interrupted; then finished
    monkeypatch.setattr(benchmark, "finished", lambda *a, **k: next(answers))
    monkeypatch.setattr(benchmark.subprocess, "Popen", lambda *a, **k: pytest.fail("the finished cell was run again"))
    benchmark.run_grid(benchmark.Run(algos=["focal"], seeds=[0], runs_dir=runs, extra="--total-steps 100", workers=1))
    out = capsys.readouterr().out
    assert "skip (finished meanwhile in runs/point-robot__focal__0__2)" in out and "0 of 0 runs succeeded" in out


def test_a_command_without_total_steps_wants_the_script_default(tmp_path, monkeypatch, capsys):
    import focal
    import metanf

    monkeypatch.chdir(ROOT)
    assert benchmark.default_total_steps("focal.py") == focal.Args().total_steps
    assert benchmark.default_total_steps("metanf.py") == metanf.Args().total_steps
    assert benchmark.requested_total_steps(["python", "focal.py", "--total-steps=300"]) == 300
    runs = str(tmp_path)
    write_run(runs, "point-robot", "focal", 0, 1, -10, -15, total=100)  # a shorter reproduction run
    write_run(runs, "point-robot", "focal", 1, 1, -10, -15, step=focal.Args().total_steps, total=focal.Args().total_steps)
    benchmark.run_grid(benchmark.Run(algos=["focal"], seeds=[0, 1], runs_dir=runs))
    out = capsys.readouterr().out
    assert "skip (finished" in out and out.count("skip") == 1 and "--seed 0 --exp-name focal\n" in out


def test_report_aggregates_mean_and_population_std(tmp_path):
    runs = str(tmp_path / "runs")
    for seed, (train, test) in enumerate([(-10.0, -15.0), (-12.0, -17.0), (-11.0, -19.0)]):
        write_run(runs, "point-robot", "focal", seed, 5, train, test)
    write_run(runs, "point-robot", "focal", 0, 4, 99.0, 99.0)  # an older run of the same cell: ignored
    write_run(runs, "point-robot", "unicorn", 0, 5, -9.0, -14.0)
    write_run(runs, "point-robot", "unicorn", 1, 5, -50.0, -50.0, step=10)  # unfinished: ignored
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "results"), plots=False, command="python x.py"))
    text = (tmp_path / "results" / "point-robot.md").read_text()
    train_std = np.std([-10.0, -12.0, -11.0])
    assert f"| train | -11.00 ± {train_std:.2f} (n=3) | -9.00 ± 0.00 (n=1) |" in text
    assert f"| test | -17.00 ± {np.std([-15.0, -17.0, -19.0]):.2f} (n=3) | -14.00 ± 0.00 (n=1) |" in text
    assert "| train | -22.00 ± 1.63 (n=3) | -18.00 ± 0.00 (n=1) |" in text  # few-shot cells (scaled by 2)
    rate = np.mean([100 / 60, 100 / 120, 100 / 180])  # steps / wall time of each run, not its last segment's rate
    assert f"| focal | 3 | 100 | 2.0 | {rate:.1f} |" in text  # runtime: mean wall time 120 s
    assert "python x.py" in text
    assert "| seed | focal | unicorn |" in text
    assert "| 0 | -10.00 / -15.00 | -9.00 / -14.00 |" in text and "| 2 | -11.00 / -19.00 | — |" in text
    assert "| 1 | -24.00 / -34.00 | — |" in text  # few-shot, seed by seed
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "only"), plots=False, exps=["unicorn", "focal"]))
    lines = (tmp_path / "only" / "point-robot.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| task set"))
    assert header == "| task set | unicorn | focal |"


def test_report_names_the_machines_the_runs_ran_on_not_its_own(tmp_path):
    runs = str(tmp_path / "runs")
    for seed, machine in enumerate(["CPU A, 2 CPU cores, Linux-1", "CPU A, 2 CPU cores, Linux-1", "GPU B, 16 CPU cores, Linux-2"]):
        run_dir = write_run(runs, "point-robot", "focal", seed, 5, -10.0, -15.0)
        with open(os.path.join(run_dir, "results.json")) as f:
            results = json.load(f)
        with open(os.path.join(run_dir, "results.json"), "w") as f:
            json.dump({**results, "machine": machine}, f)
    write_run(runs, "point-robot", "unicorn", 0, 5, -9.0, -14.0)  # made before results.json held the machine
    write_run(runs, "point-robot", "unicorn-no-selection_eval", 0, 6, -9.0, -14.0, checkpoint="x/checkpoint.pt")
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "results"), plots=False))
    text = (tmp_path / "results" / "point-robot.md").read_text()
    assert ("Machine: CPU A, 2 CPU cores, Linux-1 (2 runs); GPU B, 16 CPU cores, Linux-2 (1 runs); not recorded by 1 runs "
            "(made before results.json held it).") in text  # the evaluation-only run measured no training time
    assert platform.platform() not in text
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "focal"), plots=False, exps=["focal"]))
    assert "Machine: CPU A, 2 CPU cores, Linux-1 (2 runs); GPU B" in (tmp_path / "focal" / "point-robot.md").read_text()


def test_report_gives_an_online_protocol_its_own_table(tmp_path):
    runs = str(tmp_path / "runs")
    for seed in (0, 1):
        write_run(runs, "point-robot", "csro", seed, 5, -10.0 - seed, -15.0, online=("non_prior",))
        write_run(runs, "point-robot", "focal", seed, 5, -12.0, -16.0)
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "results"), plots=True))
    text = (tmp_path / "results" / "point-robot.md").read_text()
    table = text.split("## non-prior")[1].split("## Runtime")[0]
    assert "| task set | csro | focal |" in table
    assert "| train | -31.50 ± 1.50 (n=2) | — |" in table and "| test | -45.00 ± 0.00 (n=2) | — |" in table
    assert "| 1 | -33.00 / -45.00 | — |" in table  # seed by seed
    assert "## proximal" not in text and "## one-shot" not in text  # no run reports them
    assert (tmp_path / "results" / "point-robot_non_prior.png").exists()
    # another data set's page beside it: the suffix names the page and its plots
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "results"), plots=True, page_suffix="-mixed"))
    assert (tmp_path / "results" / "point-robot-mixed.md").read_text().count("point-robot-mixed_non_prior.png") == 2
    assert (tmp_path / "results" / "point-robot-mixed_non_prior.png").exists()


def test_report_of_the_proximal_protocol_every_episode_mean_and_online_curve(tmp_path):
    runs = str(tmp_path / "runs")
    for seed in (0, 1):
        run_dir = write_run(runs, "point-robot", "select_omrl", seed, 5, -10.0, -15.0, online=("non_prior", "proximal"))
        path = os.path.join(run_dir, "results.json")
        with open(path) as f:
            results = json.load(f)
        results["proximal"]["online"] = {"train": {"mean": -20.0 - seed, "per_task": {}},
                                         "test": {"mean": -25.0, "per_task": {}}}
        results["proximal"]["by_episode"] = {"train": [-30.0, -20.0, -10.0], "test": [-35.0, -25.0, -15.0]}
        with open(path, "w") as f:
            json.dump(results, f)
        write_run(runs, "point-robot", "csro", seed, 5, -11.0, -16.0, online=("non_prior",))
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "results"), plots=True, paper=False))
    text = (tmp_path / "results" / "point-robot.md").read_text()
    table = text.split("## proximal")[1].split("## Runtime")[0]
    assert "| task set | csro | select_omrl |" in table and "| train | — | -30.00 ± 0.00 (n=2) |" in table
    assert "| train, every online episode | — | -20.50 ± 0.50 (n=2) |" in table
    assert "| test, every online episode | — | -25.00 ± 0.00 (n=2) |" in table
    assert "every online episode" not in text.split("## proximal")[0]  # the non-prior table has no such rows
    assert (tmp_path / "results" / "point-robot_proximal_by_episode.png").stat().st_size > 1000
    assert not (tmp_path / "results" / "point-robot_non_prior_by_episode.png").exists()


def test_report_paired_differences_seed_by_seed(tmp_path):
    runs = str(tmp_path / "runs")
    for seed, (a, b) in enumerate([(-10.0, -11.0), (-12.0, -11.5), (-9.0, -12.0)]):
        write_run(runs, "point-robot", "select_omrl", seed, 5, a, a - 4.0, online=("non_prior", "proximal"))
        write_run(runs, "point-robot", "csro", seed, 5, b, b - 4.0, online=("non_prior",))
    write_run(runs, "point-robot", "select_omrl", 3, 5, 0.0, 0.0, online=("non_prior", "proximal"))  # csro lacks seed 3
    compare = ["select_omrl csro", "select_omrl:proximal csro:non_prior"]
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "results"), plots=False, paper=False,
                                      compare=compare))
    table = (tmp_path / "results" / "point-robot.md").read_text().split("## Paired differences")[1].split("## Runtime")[0]
    d = np.array([1.0, -0.5, 3.0])
    se = d.std(ddof=1) / np.sqrt(3)  # 1.0408
    assert (f"| select_omrl zero-shot | csro zero-shot | train | 0: +1.00, 1: -0.50, 2: +3.00 | +1.17 ± {se:.2f} (n=3) "
            "| 2 of 3 |") in table
    assert "| select_omrl few-shot | csro few-shot | test | 0: +2.00, 1: -1.00, 2: +6.00 |" in table  # scaled by 2
    assert "| select_omrl non-prior | csro non-prior | train |" in table  # every protocol both report
    assert "select_omrl proximal | csro proximal" not in table
    se = 3 * d.std(ddof=1) / np.sqrt(3)  # both online protocols scaled by 3
    assert f"| select_omrl proximal | csro non-prior | train | 0: +3.00, 1: -1.50, 2: +9.00 | +3.50 ± {se:.2f} (n=3) | 2 of 3 |" in table
    for spec, message in [("select_omrl", "give two columns"), ("select_omrl focal", "no column 'focal'"),
                          ("select_omrl:online csro:non_prior", "no protocol 'online'"),
                          ("select_omrl:proximal csro", "on both sides or on neither")]:
        with pytest.raises(SystemExit, match=message):
            benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "bad"), plots=False, compare=[spec]))


def test_archive_keeps_what_a_report_needs_and_no_checkpoint(tmp_path):
    runs = str(tmp_path / "runs")
    for seed in (0, 1):
        run_dir = write_run(runs, "point-robot", "csro", seed, 5, -10.0 - seed, -15.0, online=("non_prior",))
        for name in ("args.json", "events.out.tfevents.1.host", "checkpoint.pt"):
            with open(os.path.join(run_dir, name), "w") as f:
                f.write("{}")
    write_run(runs, "point-robot", "csro", 2, 5, -50.0, -50.0, step=10)  # unfinished: not archived
    write_run(runs, "point-robot", "focal", 0, 5, -12.0, -16.0)
    archived = tmp_path / "results" / "runs"
    benchmark.archive(benchmark.Archive(runs_dir=runs, out_dir=str(archived), exps=["csro"]))
    assert sorted(os.listdir(archived)) == ["point-robot__csro__0__5", "point-robot__csro__1__5"]
    assert sorted(os.listdir(archived / "point-robot__csro__0__5")) == ["args.json", "events.out.tfevents.1.host",
                                                                         "results.json"]
    benchmark.report(benchmark.Report(runs_dir=str(archived), out_dir=str(tmp_path / "again"), plots=False))
    assert "| train | -10.50 ± 0.50 (n=2) |" in (tmp_path / "again" / "point-robot.md").read_text()
    with pytest.raises(SystemExit, match="no finished runs to archive"):
        benchmark.archive(benchmark.Archive(runs_dir=str(tmp_path / "empty"), out_dir=str(archived)))


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")), reason="needs the git checkout")
def test_archived_runs_are_committed_but_run_outputs_and_data_are_not():
    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert not ignored("results/200k/runs/point-robot__csro__0__1/results.json")
    assert not ignored("results/dev/runs/point-robot__metanf-dev7__0__1/events.out.tfevents.1")
    assert ignored("runs") and ignored("data")  # (the folders themselves: here they may be links to elsewhere)


def test_report_refuses_to_overwrite_a_page_of_other_runs_unless_forced(tmp_path):
    runs = str(tmp_path / "runs")
    for seed in (0, 1):
        write_run(runs, "point-robot", "focal", seed, 5, -10.0, -15.0)
    out = str(tmp_path / "results")
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False))
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False))  # the same runs again: fine
    write_run(runs, "point-robot", "focal", 2, 5, -12.0, -15.0)  # one seed more: other inputs
    with pytest.raises(SystemExit, match="pass --force to overwrite it"):
        benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False))
    assert "(n=2)" in (tmp_path / "results" / "point-robot.md").read_text()
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False, force=True))
    assert "(n=3)" in (tmp_path / "results" / "point-robot.md").read_text()
    benchmark.report(benchmark.Report(runs_dir=runs, plots=False))
    assert (tmp_path / "runs" / "report" / "point-robot.md").exists()  # the default: under the runs folder


def test_a_page_records_the_data_of_its_runs(tmp_path):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "results")
    for seed in (0, 1):
        write_run(runs, "point-robot", "focal", seed, 5, -10.0, -15.0, data="3889cba0e12c7227")
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False))
    page = os.path.join(out, "point-robot.md")
    assert benchmark.page_inputs(page)["focal"]["data"] == ["expert, task seed 1337, data 3889cba0e12c7227"]
    assert "| gradient steps, data | 100, 3889cba0e12c7227 |" in open(page).read()
    # the same seeds again, one of them trained on another copy of the data: one column never holds both copies
    write_run(runs, "point-robot", "focal", 1, 6, -10.0, -15.0, data="020f0d4e6edab635")
    for force in (False, True):
        with pytest.raises(SystemExit, match="focal were made with different settings or data .*data: seed 0 3889cba0e12c7227, "
                                             "seed 1 020f0d4e6edab635"):
            benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False, force=force))
    write_run(runs, "point-robot", "focal", 0, 6, -10.0, -15.0, data="020f0d4e6edab635")  # seed 0 again on that copy
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False, force=True))
    assert benchmark.page_inputs(page)["focal"]["data"] == ["expert, task seed 1337, data 020f0d4e6edab635"]


def test_a_column_accepts_a_default_that_follows_the_seed_and_refuses_a_given_one_that_differs(tmp_path):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "results")
    for seed in (0, 1):  # GENTLE's --dynamics-seed is --seed unless given: seed by seed, one setting
        write_run(runs, "point-robot", "gentle", seed, 5, -10.0, -15.0)
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False))
    write_run(runs, "point-robot", "gentle", 2, 5, -10.0, -15.0, flags=("--dynamics-seed", "0"))  # a shared fit
    with pytest.raises(SystemExit, match=r"column gentle were made with different settings or data \(--dynamics-seed: "
                                         r"seed 0 0, seed 1 1, seed 2 0\)"):
        benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False, force=True))
    write_run(runs, "point-robot", "gentle", 1, 6, -10.0, -15.0, flags=("--dynamics-seed", "0"))
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=out, plots=False, force=True))  # every seed: fit 0


def test_report_never_mixes_budgets(tmp_path):
    runs = str(tmp_path / "runs")
    for seed in (0, 1, 2):
        write_run(runs, "point-robot", "focal", seed, 5, -10.0 - seed, -15.0)
    write_run(runs, "point-robot", "focal", 0, 6, -8.0, -13.0, step=1000, total=1000)  # newer, and of a larger budget
    write_run(runs, "point-robot", "unicorn", 0, 5, -9.0, -14.0)
    with pytest.raises(SystemExit, match="columns differ in budget or data .*focal: 1,000 steps.*unicorn: 100 steps.*--mixed"):
        benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "largest"), plots=False))
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "largest"), plots=False, mixed=True))
    text = (tmp_path / "largest" / "point-robot.md").read_text()
    assert "| train | -8.00 ± 0.00 (n=1) | -9.00 ± 0.00 (n=1) |" in text  # each column: its largest budget
    assert "| focal | 1 | 1,000 |" in text and "| unicorn | 1 | 100 |" in text
    assert f"| gradient steps, data | 1,000, {FAKE_DATA} | 100, {FAKE_DATA} |" in text  # said in the table itself
    assert "(paper: 5 seeds, 200,000 steps, its own data)" in text
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "short"), plots=False, total_steps=100))
    text = (tmp_path / "short" / "point-robot.md").read_text()
    assert "| train | -11.00 ± 0.82 (n=3) | -9.00 ± 0.00 (n=1) |" in text and "| focal | 3 | 100 |" in text
    with pytest.raises(SystemExit, match="no finished runs trained for 5 steps"):
        benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "none"), plots=False, total_steps=5))


def test_report_includes_evaluations_of_final_checkpoints(tmp_path):
    runs = str(tmp_path / "runs")
    for seed in (0, 1):
        write_run(runs, "point-robot", "metanf", seed, 5, -10.0, -15.0)
        write_run(runs, "point-robot", "metanf-no-selection_eval", seed, 6, -11.0 - seed, -16.0, checkpoint="c.pt")
    write_run(runs, "point-robot", "metanf-no-selection_eval", 2, 6, 99.0, 99.0, step=50, checkpoint="c.pt")  # intermediate
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "results"), plots=True))
    text = (tmp_path / "results" / "point-robot.md").read_text()
    assert "| task set | metanf | metanf-no-selection_eval |" in text
    assert "| train | -10.00 ± 0.00 (n=2) | -11.50 ± 0.50 (n=2) |" in text
    assert "| metanf-no-selection_eval | 2 | 100 | evaluation of saved checkpoints | — |" in text
    paper = "(paper: 5 seeds, 200,000 steps, its own data)"
    assert f"| train {paper} | -10.11 ± 0.76 | -12.40 ± 0.59 |" in text  # Meta-NF's Table 1: full, w/o selection
    assert f"| test {paper} | -14.53 ± 0.81 | -17.38 ± 1.21 |" in text
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(tmp_path / "own"), plots=False, paper=False))
    assert "(paper)" not in (tmp_path / "own" / "point-robot.md").read_text()


def test_slurm_script_text(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    args = benchmark.Run(algos=["unicorn"], seeds=[0, 1], slurm=True, slurm_cpus=8, slurm_gpus=1, slurm_partition="gpu",
                         runs_dir=str(tmp_path))
    text = benchmark.slurm_script(args, benchmark.grid(args))
    assert "#SBATCH --array=0-1" in text and "#SBATCH --cpus-per-task=8" in text and "#SBATCH --gres=gpu:1" in text
    assert "#SBATCH --partition=gpu" in text and 'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"' in text
    assert "'python unicorn.py --env point-robot --seed 1 --exp-name unicorn'" in text


def test_tiny_real_run_and_report(tmp_path):
    data = tmp_path / "data"
    collect = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "point-robot", "--n-tasks", "4",
               "--n-train", "2", "--out-dir", str(data), "--sac-steps", "200", "--learning-starts", "100",
               "--batch-size", "16", "--num-trajectories", "3", "--random-episodes", "1", "--log-every", "200"]
    subprocess.run(collect, cwd=tmp_path, check=True, capture_output=True)
    extra = (f"--data-dir {data} --n-tasks 4 --n-train 2 --total-steps 20 --eval-every 10 --log-every 10 --eval-episodes 1 "
             "--meta-batch-size 4 --batch-size 16")
    bench = [sys.executable, os.path.join(ROOT, "benchmark.py")]
    result = subprocess.run([*bench, "run", "--algos", "focal", "--seeds", "0", "1", "--workers", "2", f"--extra={extra}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 runs succeeded" in result.stdout
    assert (tmp_path / "runs" / "logs" / "point-robot__focal__1.log").exists()
    again = subprocess.run([*bench, "run", "--algos", "focal", "--seeds", "0", "1", "--workers", "2", f"--extra={extra}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.stdout.count("skip (finished") == 2
    log = (tmp_path / "runs" / "logs" / "point-robot__focal__1.log").read_text()
    assert log.startswith("# ") and "--seed 1" in log.splitlines()[0] and "step 20: " in log
    result = subprocess.run([*bench, "run", "--algos", "focal", "--eval-of", "focal", "--seeds", "0", "1", "--workers", "2",
                             f"--extra={extra}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "2 of 2 runs succeeded" in result.stdout, result.stdout + result.stderr
    result = subprocess.run([*bench, "report"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "results").exists()  # by default the report goes under runs/, never over results/
    text = (tmp_path / "runs" / "report" / "point-robot.md").read_text()
    assert "(n=2)" in text and "## zero-shot" in text and "## few-shot" in text
    header, _, budget, train, test = text.split("## zero-shot")[1].strip().splitlines()[:5]
    assert budget.startswith("| gradient steps, data | 20, ")
    assert header == "| task set | focal | focal_eval |"
    for row in (train, test):  # evaluating the final checkpoints again gives the runs' own numbers
        cells = row.split(" | ")
        assert cells[1] == cells[2].rstrip(" |")
    assert (tmp_path / "runs" / "report" / "point-robot_zero_shot.png").stat().st_size > 1000


def test_speed_times_every_script_and_the_collection(tmp_path):
    # the GPU figures come from this command with --device cuda; on the CPU it checks that every script's update runs
    command = [sys.executable, os.path.join(ROOT, "benchmark.py"), "speed", "--env", "point-robot", "--device", "cpu",
               "--updates", "2", "--collect-steps", "20"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split(" | ")[0].strip("| "): line for line in result.stdout.splitlines() if line.startswith("| ")}
    for script in ("focal", "csro", "unicorn", "gentle", "metanf", "select_omrl"):
        cells = [c.strip() for c in rows[script].strip("|").split("|")]
        assert cells[1] == "point-robot" and float(cells[2].replace(",", "")) > 0 and float(cells[3]) > 0.1
    collection = [line for line in result.stdout.splitlines() if line.startswith("| point-robot | ")]
    assert [line.split(" | ")[1] for line in collection] == ["1", "20"]


def test_speed_without_the_collection_and_bad_counts(tmp_path):
    base = [sys.executable, os.path.join(ROOT, "benchmark.py"), "speed", "--env", "point-robot", "--device", "cpu",
            "--algos", "focal"]
    result = subprocess.run(base + ["--updates", "1", "--collect-steps", "0"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| focal | point-robot |" in result.stdout and "data collection" not in result.stdout
    bad = subprocess.run(base + ["--collect-steps", "-1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--collect-steps at least 0" in bad.stderr
