import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common.datasets import task_file  # noqa: E402
from test_algorithms import SCRIPTS, TINY, interrupted_unicorn_run, load_results, run, tiny  # noqa: E402


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_non_positive_step_count_is_refused_before_any_run_folder(script, tmp_path):
    result = run(script, tmp_path, "--total-steps", "0", "--data-dir", str(tmp_path), check=False)
    assert result.returncode == 2 and result.stderr.strip() == "error: --total-steps 0: must lie in [1, inf)"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, named", [
    (["--eval-every", "0"], "--eval-every 0: must lie in [1, inf)"),
    (["--log-every", "-5"], "--log-every -5: must lie in [1, inf)"),
    (["--latent-dim", "0"], "--latent-dim 0: must lie in [1, inf)"),
    (["--n-tasks", "1"], "--n-tasks 1: must lie in [2, inf)"),
    (["--seed", "-1"], "--seed -1: must lie in [0, 4294967295]"),
    (["--policy-frequency", "0"], "--policy-frequency 0: must lie in [1, inf)"),
    (["--gamma", "nan"], "--gamma nan: must lie in [0, 1]"),
    (["--n-train", "30"], "--n-train 30: n_train must lie in [1, 19] for 20 tasks"),
    (["--device", "gpu"], "--device gpu: not a torch device"),
    (["--env", "cheetah-speed"], "--env cheetah-speed: unknown; valid names are: point-robot"),
    (["--eval-only"], "--eval-only needs --checkpoint PATH"),
])
def test_bad_arguments_are_one_line_that_names_them(flags, named, tmp_path):
    result = run("focal", tmp_path, *flags, "--data-dir", str(tmp_path), check=False)
    assert result.returncode == 2 and named in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_before_any_run_folder(tmp_path):
    result = run("unicorn", tmp_path, "--device", "cuda", check=False)
    assert result.returncode == 2 and "--device cuda: this torch" in result.stderr and "sees no CUDA device" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"truncated")
    result = run("gentle", tmp_path, "--eval-only", "--checkpoint", str(tmp_path / "checkpoint.pt"), check=False)
    assert result.returncode == 2 and "--checkpoint" in result.stderr and "not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_a_run_resumed_from_only_its_checkpoint_is_the_uninterrupted_run(data_dir, tmp_path):
    (tmp_path / "straight").mkdir()
    run("unicorn", tmp_path / "straight", *TINY, "--data-dir", data_dir)
    (straight,) = glob.glob(str(tmp_path / "straight" / "runs" / "point-robot__unicorn__0__*"))
    run_dir, path, _ = interrupted_unicorn_run(tmp_path, data_dir)
    run("unicorn", tmp_path / "straight", "--checkpoint", path)  # nothing else: every argument comes from the run
    resumed, uninterrupted = load_results(run_dir), load_results(straight)
    assert resumed["step"] == 40 == uninterrupted["step"]
    assert resumed["zero_shot"] == uninterrupted["zero_shot"] and resumed["few_shot"] == uninterrupted["few_shot"]
    with open(os.path.join(run_dir, "args.json")) as f, open(os.path.join(straight, "args.json")) as g:
        assert json.load(f) == json.load(g)


def test_a_flag_that_contradicts_the_checkpoint_is_an_error_that_names_it(data_dir, tmp_path):
    run("focal", tmp_path, *TINY, "--data-dir", data_dir)
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__focal__0__*"))
    path = os.path.join(run_dir, "checkpoint.pt")
    result = run("focal", tmp_path, "--checkpoint", path, "--seed", "3", "--total-steps", "60", check=False)
    assert result.returncode == 2 and "--seed 3: the run of" in result.stderr and "has 0" in result.stderr
    assert "--total-steps" in result.stderr  # the message lists what may change
    result = run("focal", tmp_path, "--checkpoint", path, "--eval-only", "--batch-size", "64", check=False)
    assert result.returncode == 2 and "--batch-size 64" in result.stderr
    # the same value as the run's is no contradiction, and an evaluation option may change with --eval-only
    run("focal", tmp_path, "--checkpoint", path, "--eval-only", "--seed", "0", "--eval-episodes", "1")



@pytest.mark.parametrize("script", SCRIPTS)
def test_a_checkpoint_resumes_only_on_the_data_it_trained_on(script, data_dir, tmp_path):
    run(script, tmp_path, *tiny(script), "--data-dir", data_dir)
    (run_dir,) = glob.glob(str(tmp_path / "runs" / f"point-robot__{script}__0__*"))
    path = os.path.join(run_dir, "checkpoint.pt")
    same, other = tmp_path / "same", tmp_path / "other"
    for copy in (same, other):
        shutil.copytree(os.path.join(data_dir, "point-robot", "expert"), copy / "point-robot" / "expert")
    task = dict(np.load(task_file(str(other), "point-robot", "expert", 1)))
    task["rewards"][7] += 1e-3  # one value of one task, nothing a shape or count check could see
    np.savez(task_file(str(other), "point-robot", "expert", 1), **task)

    result = run(script, tmp_path, "--checkpoint", path, "--total-steps", "60", "--data-dir", str(other), check=False)
    assert result.returncode == 2 and "its run trained on other data than" in result.stderr
    assert "--data-dir" in result.stderr and len(glob.glob(str(tmp_path / "runs" / "*"))) == 1
    result = run(script, tmp_path, "--checkpoint", path, "--eval-only", "--eval-episodes", "1", "--data-dir", str(other))
    assert "warning: --checkpoint" in result.stdout and "its run trained on other data than" in result.stdout
    run(script, tmp_path, "--checkpoint", path, "--total-steps", "60", "--data-dir", str(same))  # a copy is the same data
    (trained_further,) = set(glob.glob(str(tmp_path / "runs" / f"point-robot__{script}__0__*"))) - {run_dir}
    assert load_results(trained_further)["step"] == 60


def test_docs_cite_only_files_of_the_repository():
    pages = glob.glob(os.path.join(ROOT, "docs", "*.md")) + [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "results", "README.md")]
    for page in pages:
        with open(page) as f:
            text = f.read()
        assert "../shared" not in text and "DECISIONS.md" not in text and "spec/" not in text, page
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if not target.startswith("http"):
                assert os.path.exists(os.path.join(os.path.dirname(page), target)), (page, target)


def test_atomic_writes_give_files_the_umask_mode(tmp_path):
    from common.datasets import atomic_write_json

    previous = os.umask(0o022)
    try:
        atomic_write_json(str(tmp_path / "a.json"), {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_collection_refuses_a_sac_budget_inside_the_warm_up(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "point-robot", "--sac-steps", "1000",
               "--out-dir", str(tmp_path / "data")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--sac-steps 1000" in result.stderr and "--learning-starts 2000" in result.stderr
    assert not (tmp_path / "data").exists()


def test_collection_logs_under_its_output_folder(data_dir):
    assert glob.glob(os.path.join(data_dir, "runs", "point-robot__collect_data_expert__0__*", "events.*"))


TINY_SAC = ["--sac-steps", "300", "--learning-starts", "100", "--batch-size", "32", "--num-trajectories", "6",
            "--random-episodes", "1", "--log-every", "300"]


def test_collection_progress_gives_no_time_left_during_the_random_warm_up(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "point-robot", "--n-tasks", "2",
               "--n-train", "1", "--out-dir", str(tmp_path), "--sac-steps", "200", "--learning-starts", "100",
               "--batch-size", "16", "--num-trajectories", "1", "--random-episodes", "1", "--log-every", "50"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " steps/s | " in line]
    assert [line.split()[4] for line in lines] == ["50/200", "100/200", "150/200", "200/200"]
    assert all(line.endswith("ETA after the random warm-up") for line in lines[:2])
    assert all(re.search(r"ETA \d+:\d\d:\d\d$", line) for line in lines[2:]) and all(line.count("/s") == 1 for line in lines)


def test_a_task_set_mismatch_suggests_a_collection_that_runs(data_dir, tmp_path):
    from common.datasets import DatasetError, load_dataset

    with pytest.raises(DatasetError) as error:
        load_dataset("point-robot", "expert", data_dir, None, n_tasks=4, task_seed=7)
    lines = str(error.value).splitlines()
    command = lines[-2].split()
    assert command[:2] == ["python", "collect_data.py"] and "--task-seed" in command and lines[-1].startswith("and pass")
    own_folder = command[command.index("--out-dir") + 1]
    assert own_folder != data_dir and lines[-1] == f"and pass --data-dir {own_folder}"
    subprocess.run([sys.executable, os.path.join(ROOT, *command[1:2]), *command[2:], "--n-train", "2", *TINY_SAC],
                   cwd=tmp_path, check=True, capture_output=True, timeout=300)
    assert len(load_dataset("point-robot", "expert", own_folder, None, n_tasks=4, task_seed=7).tasks) == 4


def test_an_interrupted_first_collection_resumes(tmp_path):
    import collect_data

    out = str(tmp_path / "data")
    args = collect_data.Args(env="point-robot", n_tasks=4, n_train=2, out_dir=out, sac_steps=300, learning_starts=100,
                             batch_size=32)
    args.num_trajectories, args.hidden_dim, args.checkpoint_every = 6, 64, 15
    collect_data.update_metadata(args, 2, 2, {})  # what a first collection writes before its first task is done
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "point-robot", "--n-tasks", "4",
               "--n-train", "2", "--out-dir", out, *TINY_SAC]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(out, "point-robot", "expert", "metadata.json")) as f:
        assert sorted(json.load(f)["tasks"]) == ["0", "1", "2", "3"]


def test_an_interrupted_collection_writes_what_an_uninterrupted_one_writes(tmp_path):
    import shutil

    def collect(out, tasks, *extra):
        command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "point-robot", "--out-dir", str(out),
                   "--tasks", *tasks, "--tasks-per-batch", "2", *TINY_SAC, *extra]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    mixed = ("--behavior", "mixed", "--num-checkpoints", "2")
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    collect(straight, ["0", "1", "2"])  # batches [0, 1] and [2], one after the other in one process
    collect(straight, ["0", "1", "2"], *mixed)
    # cut after the first batch; then cut again in the second batch after its SAC training, before its rollouts
    collect(cut, ["0", "1"])
    shutil.copytree(straight / "point-robot" / "sac" / "seed_0" / "task_02", cut / "point-robot" / "sac" / "seed_0" / "task_02")
    stdout = collect(cut, ["0", "1", "2"])
    assert "continuing the random stream of the collection that wrote tasks [0, 1]" in stdout and "SAC done" not in stdout
    collect(cut, ["0", "1"], *mixed)
    collect(cut, ["0", "1", "2"], *mixed)
    for behavior in ("expert", "mixed"):
        for task in range(3):
            a = np.load(task_file(str(straight), "point-robot", behavior, task))
            b = np.load(task_file(str(cut), "point-robot", behavior, task))
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{behavior} task {task}: {key}")


def test_a_collection_whose_replay_buffers_do_not_fit_is_refused_before_any_folder(tmp_path):
    import collect_data

    free = collect_data.available_memory(torch.device("cpu"))
    if free is None:
        pytest.skip("no /proc/meminfo")
    per_step = (2 * 2 + 2 + 2) * 4  # point-robot: s, s' (2 each), a (2), r and the termination flag, float32
    steps = int(free / 3 / per_step)  # a third of the free memory per task: 2 tasks of a batch fit, 20 do not
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "point-robot", "--out-dir",
               str(tmp_path / "data"), "--sac-steps", str(steps)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "SAC's replay buffers for 20 tasks" in result.stderr
    assert result.stderr.strip().endswith("pass --tasks-per-batch 2") and not (tmp_path / "data").exists()
    result = subprocess.run(command[:-1] + [str(100 * steps)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "even one task does not fit" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_collection_on_cuda_without_cuda_is_refused(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--device", "cuda", "--out-dir", str(tmp_path / "d")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--device cuda" in result.stderr and not (tmp_path / "d").exists()


def test_an_interrupted_sac_run_continues_exactly_from_its_saved_state(tmp_path, monkeypatch, capsys):
    import collect_data
    from torch.utils.tensorboard import SummaryWriter

    tasks = collect_data.get_tasks("cheetah-vel", 20, 1337)

    def train(out, minutes, batch_size=16):
        """SAC of cheetah-vel tasks 3 and 5 (MuJoCo envs cut mid-episode), with the replay behaviour's recorder."""
        args = collect_data.Args(env="cheetah-vel", out_dir=str(out), sac_steps=120, learning_starts=40,
                                 batch_size=batch_size, hidden_dim=32, checkpoint_every=60, resume_every_minutes=minutes)
        torch.manual_seed(0)
        recorder = collect_data.EpisodeRecorder(2, args.sac_steps, 20, 6, store_transitions=False)
        with SummaryWriter(str(out / "tb")) as writer:
            rb = collect_data.train_sac(args, [3, 5], tasks, torch.device("cpu"), writer, recorder)
        finals = [torch.load(os.path.join(collect_data.sac_dir(args, i), "sac_final.pt")) for i in (3, 5)]
        return finals, rb, recorder, collect_data.resume_dir(args, [3, 5])

    straight, straight_rb, straight_recorder, _ = train(tmp_path / "straight", 0)
    update, calls = collect_data.BatchedSAC.update, []

    def killed_at_the_50th_update(self, batch):  # the 50th update is at step 90 (updates begin at step 41)
        calls.append(1)
        if len(calls) == 50:
            raise KeyboardInterrupt
        return update(self, batch)

    monkeypatch.setattr(collect_data.BatchedSAC, "update", killed_at_the_50th_update)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", 1e-9)  # a state saved after every step
    monkeypatch.setattr(collect_data.BatchedSAC, "update", update)
    folder = collect_data.resume_dir(collect_data.Args(env="cheetah-vel", out_dir=str(tmp_path / "cut")), [3, 5])
    assert torch.load(os.path.join(folder, "state.pt"), weights_only=False)["step"] == 89
    assert sorted(f for f in os.listdir(folder) if f.endswith(".npy")) == sorted(
        f"{k}_step89.npy" for k in collect_data.BUFFER_FIELDS)  # the older steps' buffer files are gone
    with pytest.raises(SystemExit, match="interrupted SAC run of other settings"):
        train(tmp_path / "cut", 1e-9, batch_size=8)
    resumed, resumed_rb, resumed_recorder, folder = train(tmp_path / "cut", 1e-9)
    assert "resuming SAC at step 89" in capsys.readouterr().out and not os.path.exists(folder)

    def tensors(final: dict) -> dict:  # the weights of every network of a task's final SAC state, and its log_alpha
        return {f"{k}.{n}": t for k, v in final.items() for n, t in (v.items() if isinstance(v, dict) else [("", v)])}

    for a, b in zip(straight, resumed):
        a, b = tensors(a), tensors(b)
        assert a.keys() == b.keys() and len(a) == 33 and all(torch.equal(a[k], b[k]) for k in a)
    for k in collect_data.BUFFER_FIELDS:
        assert torch.equal(getattr(straight_rb, k), getattr(resumed_rb, k))
    for k, v in straight_recorder.arrays.items():
        np.testing.assert_array_equal(v, resumed_recorder.arrays[k], err_msg=k)
