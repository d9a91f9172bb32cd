import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.datasets import DatasetError, TaskBatchSampler, load_dataset, normalization_stats, task_file
from common.envs import get_tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--sac-steps", "400", "--learning-starts", "100", "--batch-size", "32", "--log-every", "200", "--random-episodes", "2"]


def collect(out_dir, *extra):
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--out-dir", str(out_dir), *TINY, *extra]
    result = subprocess.run(command, cwd=out_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def point_robot(tmp_path_factory):
    """A tiny expert dataset of point-robot tasks 0 and 1 (SAC updates run: 400 steps, learning starts at 100)."""
    out = tmp_path_factory.mktemp("data")
    stdout = collect(out, "--env", "point-robot", "--tasks", "0", "1", "--num-trajectories", "3")
    return out, stdout


def check_point_robot_transitions(data, goal):
    # every field recomputed from the point-robot dynamics: s' = s + 0.1 a, r = -|s' - g|
    np.testing.assert_allclose(data["next_observations"], data["observations"] + 0.1 * data["actions"], atol=1e-6)
    np.testing.assert_allclose(data["rewards"], -np.linalg.norm(data["next_observations"] - goal, axis=1), atol=1e-5)
    assert np.abs(data["actions"]).max() <= 1.0
    assert not data["terminations"].any()
    same_episode = data["episode_ids"][1:] == data["episode_ids"][:-1]
    np.testing.assert_array_equal(data["observations"][1:][same_episode], data["next_observations"][:-1][same_episode])


def test_expert_roundtrip(point_robot):
    out, stdout = point_robot
    dataset = load_dataset("point-robot", "expert", root=str(out))
    assert sorted(dataset.tasks) == [0, 1]
    tasks = get_tasks("point-robot")
    for task_id, data in dataset.tasks.items():
        assert len(data["rewards"]) == 3 * 20
        np.testing.assert_array_equal(data["episode_ids"], np.repeat(np.arange(3), 20))
        np.testing.assert_array_equal(data["truncations"], np.tile(np.arange(20) == 19, 3))
        assert (data["policy_steps"] == 400).all()
        assert data["observations"].dtype == np.float32 and data["observations"].shape == (60, 2)
        check_point_robot_transitions(data, np.array(tasks[task_id]["goal"]))
    meta = dataset.metadata
    assert meta["format_version"] == 1 and meta["env"] == "point-robot" and meta["behavior"] == "expert"
    assert meta["train_task_ids"] == list(range(10)) and meta["test_task_ids"] == list(range(10, 20))
    assert meta["tasks"]["1"]["params"] == tasks[1] and meta["tasks"]["1"]["num_episodes"] == 3
    task0 = dataset.tasks[0]
    returns = [task0["rewards"][task0["episode_ids"] == e].sum() for e in range(3)]
    assert meta["tasks"]["0"]["return"]["mean"] == pytest.approx(np.mean(dataset.tasks[0]["rewards"]) * 20, rel=1e-5)
    assert meta["tasks"]["0"]["return"]["max"] == pytest.approx(max(returns), rel=1e-5)
    assert set(meta["versions"]) == {"gymnasium", "mujoco", "torch", "numpy"}
    assert meta["sac"]["sac_steps"] == 400 and meta["sac_checkpoint_steps"][-1] == 400
    sac = out / "point-robot" / "sac" / "seed_0" / "task_00"
    assert (sac / "actor_step400.pt").exists() and (sac / "sac_final.pt").exists()
    assert set(torch.load(sac / "sac_final.pt")) >= {"actor", "qf1", "qf2", "qf1_target", "qf2_target", "log_alpha"}
    assert "step 400/400" in stdout


def test_resume_skips_finished_tasks_and_mixed_reuses_sac(point_robot):
    out, _ = point_robot
    before = os.path.getmtime(task_file(str(out), "point-robot", "expert", 0))
    stdout = collect(out, "--env", "point-robot", "--tasks", "0", "1", "--num-trajectories", "3")
    assert "task 0: already complete" in stdout and "task 1: already complete" in stdout and "SAC done" not in stdout
    assert os.path.getmtime(task_file(str(out), "point-robot", "expert", 0)) == before

    stdout = collect(out, "--env", "point-robot", "--tasks", "0", "1", "--behavior", "mixed", "--num-trajectories", "5",
                     "--num-checkpoints", "4")
    assert "tasks [0, 1]: reusing the SAC checkpoints" in stdout and "SAC done" not in stdout
    dataset = load_dataset("point-robot", "mixed", root=str(out))
    steps = dataset.tasks[0]["policy_steps"]
    # 5 trajectories over 4 checkpoints at steps 100, 200, 300, 400: the last one rolls out two
    np.testing.assert_array_equal(steps[::20], [100, 200, 300, 400, 400])
    assert dataset.metadata["mixed_checkpoint_steps"] == [[100, 1], [200, 1], [300, 1], [400, 2]]
    check_point_robot_transitions(dataset.tasks[1], np.array(get_tasks("point-robot")[1]["goal"]))


def test_partly_trained_batch_trains_only_the_missing_task_and_other_settings_stop(point_robot, tmp_path):
    import shutil

    shutil.copytree(point_robot[0] / "point-robot" / "sac", tmp_path / "point-robot" / "sac")  # SAC of tasks 0 and 1
    out = tmp_path
    sac_0 = out / "point-robot" / "sac" / "seed_0" / "task_00" / "actor_step400.pt"
    before = os.path.getmtime(sac_0)
    stdout = collect(out, "--env", "point-robot", "--tasks", "0", "2", "--behavior", "mixed", "--num-trajectories", "2",
                     "--num-checkpoints", "2")
    assert "tasks [0]: reusing the SAC checkpoints" in stdout and "[point-robot tasks 2..2] SAC done" in stdout
    assert os.path.getmtime(sac_0) == before  # task 0's SAC was not trained again
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--out-dir", str(out), *TINY, "--env", "point-robot",
               "--tasks", "0", "--behavior", "replay", "--gamma", "0.9"]
    result = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "trained with other settings" in result.stderr
    assert os.path.getmtime(sac_0) == before
    # a dataset of other settings is refused before any work
    other = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--out-dir", str(out), *TINY, "--env", "point-robot",
             "--tasks", "1", "--behavior", "mixed", "--num-trajectories", "4", "--num-checkpoints", "2"]
    stdout_err = subprocess.run(other, cwd=out, capture_output=True, text=True, timeout=300)
    assert stdout_err.returncode != 0 and "was collected with num_trajectories=2, this run has 4" in stdout_err.stderr
    assert "SAC done" not in stdout_err.stdout


def test_replay_is_the_whole_buffer(tmp_path):
    collect(tmp_path, "--env", "point-robot", "--tasks", "3", "--behavior", "replay")
    data = load_dataset("point-robot", "replay", root=str(tmp_path)).tasks[3]
    assert len(data["rewards"]) == 400
    np.testing.assert_array_equal(data["policy_steps"], np.arange(400))
    np.testing.assert_array_equal(data["episode_ids"], np.repeat(np.arange(20), 20))
    check_point_robot_transitions(data, np.array(get_tasks("point-robot")[3]["goal"]))


def test_cheetah_vel_tiny(tmp_path):
    collect(tmp_path, "--env", "cheetah-vel", "--tasks", "2", "--num-trajectories", "1", "--hidden-dim", "32")
    data = load_dataset("cheetah-vel", root=str(tmp_path)).tasks[2]
    assert data["observations"].shape == (200, 20) and data["actions"].shape == (200, 6)
    assert data["truncations"][-1] and data["truncations"].sum() == 1 and not data["terminations"].any()
    np.testing.assert_array_equal(data["observations"][1:], data["next_observations"][:-1])


def test_missing_dataset_prints_collect_command(tmp_path):
    with pytest.raises(DatasetError, match="python collect_data.py --env ant-dir --behavior mixed --out-dir"):
        load_dataset("ant-dir", "mixed", root=str(tmp_path))
    with pytest.raises(ValueError, match="valid names are"):
        load_dataset("ant-direction", root=str(tmp_path))


def test_dataset_with_no_finished_task(tmp_path):
    # collect_data.py writes metadata.json before its first task is done
    folder = tmp_path / "point-robot" / "expert"
    folder.mkdir(parents=True)
    metadata = {"format_version": 1, "env": "point-robot", "behavior": "expert", "tasks": {}}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(DatasetError, match="(?s)no task has been collected yet.*python collect_data.py --env point-robot"):
        load_dataset("point-robot", root=str(tmp_path))


def test_other_simulator_version_is_refused(point_robot, tmp_path):
    copy_dataset(point_robot[0], tmp_path)
    meta = tmp_path / "point-robot" / "expert" / "metadata.json"
    metadata = json.loads(meta.read_text())
    metadata["versions"]["mujoco"] = "2.1.0"
    meta.write_text(json.dumps(metadata))
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--out-dir", str(tmp_path), *TINY,
               "--env", "point-robot", "--tasks", "2", "--num-trajectories", "3"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "was collected with mujoco 2.1.0" in result.stderr
    assert json.loads(meta.read_text())["versions"]["mujoco"] == "2.1.0"  # the record is kept


def test_uncollected_task_and_other_task_set(point_robot):
    out, _ = point_robot
    with pytest.raises(DatasetError, match="task 5 has not been collected"):
        load_dataset("point-robot", root=str(out), task_ids=[0, 5])
    with pytest.raises(DatasetError, match="other task parameters.*task_seed=7"):
        load_dataset("point-robot", root=str(out), task_seed=7)


def copy_dataset(src, dst):
    import shutil

    shutil.copytree(src / "point-robot" / "expert", dst / "point-robot" / "expert")


def test_truncated_and_corrupt_files(point_robot, tmp_path):
    out, _ = point_robot
    copy_dataset(out, tmp_path)
    path = task_file(str(tmp_path), "point-robot", "expert", 1)
    blob = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"task_01\.npz: unreadable.*recollect"):
        load_dataset("point-robot", root=str(tmp_path))

    data = dict(np.load(task_file(str(out), "point-robot", "expert", 0)))
    bad = {**data, "rewards": data["rewards"].copy()}
    bad["rewards"][3] = np.nan
    np.savez(task_file(str(tmp_path), "point-robot", "expert", 1), **bad)
    with pytest.raises(DatasetError, match="'rewards' holds non-finite values"):
        load_dataset("point-robot", root=str(tmp_path))
    np.savez(task_file(str(tmp_path), "point-robot", "expert", 1), **{**data, "observations": data["observations"][:, :1]})
    with pytest.raises(DatasetError, match=r"'observations' has shape \(60, 1\), expected \(60, 2\)"):
        load_dataset("point-robot", root=str(tmp_path))
    np.savez(task_file(str(tmp_path), "point-robot", "expert", 1), **{k: v for k, v in data.items() if k != "truncations"})
    with pytest.raises(DatasetError, match=r"missing fields \['truncations'\]"):
        load_dataset("point-robot", root=str(tmp_path))
    meta = tmp_path / "point-robot" / "expert" / "metadata.json"
    meta.write_text(meta.read_text()[:100])
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset("point-robot", root=str(tmp_path))


def test_sampler_shapes_normalization_and_contexts(point_robot):
    out, _ = point_robot
    dataset = load_dataset("point-robot", root=str(out))
    mean, std = normalization_stats(dataset, [0, 1])
    observations = np.concatenate([dataset.tasks[i]["observations"] for i in (0, 1)])
    np.testing.assert_allclose(mean, observations.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, observations.std(0), rtol=1e-5)
    sampler = TaskBatchSampler(dataset, [0, 1], mean, std)
    torch.manual_seed(0)
    task_idx = torch.tensor([1, 0, 1])
    batch = sampler.sample(task_idx, 7)
    assert batch["observations"].shape == (3, 7, 2) and batch["rewards"].shape == (3, 7, 1)
    assert batch["terminations"].shape == (3, 7, 1) and batch["actions"].shape == (3, 7, 2)
    # every sampled row is a real transition of the requested task
    raw = dataset.tasks[1]
    normalized = (raw["observations"] - mean) / std
    for row in batch["observations"][0].numpy():
        assert np.abs(normalized - row).sum(1).min() < 1e-5
    context, mask = sampler.sample_context(task_idx, 25, trajectory=True)
    assert context["observations"].shape == (3, 25, 2) and mask.shape == (3, 25, 1)
    assert mask[:, :20].all() and not mask[:, 20:].any()  # point-robot episodes are 20 steps long
    # a trajectory context is contiguous: each step starts where the previous one ended
    np.testing.assert_allclose(context["observations"][:, 1:20], context["next_observations"][:, :19], atol=1e-6)
    context, mask = sampler.sample_context(task_idx, 9)
    assert context["next_observations"].shape == (3, 9, 2) and mask.all()


def test_metadata_is_plain_json(point_robot):
    out, _ = point_robot
    with open(out / "point-robot" / "expert" / "metadata.json") as f:
        meta = json.load(f)
    assert meta["tasks"]["0"]["random_policy_return"]["mean"] < 0
