"""--capture-video: point-robot trajectory pictures, MuJoCo MP4s rendered offscreen, and the report's figure."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import benchmark  # noqa: E402
import unicorn  # noqa: E402
from test_algorithms import SCRIPTS, run, tiny  # noqa: E402

OFFSCREEN = {**os.environ, "MUJOCO_GL": "egl"}


def test_settled_step_hand_computed():
    # distances to the final code: 1, 0.5, 0.2, 0.05, 0.08, 0 -> above a tenth of the largest (0.1) until step 2
    codes = np.array([[1.0], [0.5], [0.2], [0.05], [0.08], [0.0]])
    assert unicorn.settled_step(codes) == 3
    assert unicorn.settled_step(np.zeros((4, 2))) == 0  # a code that never moved settled at once


def test_a_frame_rendered_offscreen_on_this_cpu_has_the_expected_shape_and_is_not_blank():
    code = ("import json, mujoco, numpy as np; from common.envs import make_env; env = make_env('cheetah-vel', 0); "
            "env.reset(seed=0); r = mujoco.Renderer(env.unwrapped.model, 240, 320); r.update_scene(env.unwrapped.data); "
            "f = r.render(); print(json.dumps([f.shape, str(f.dtype), float(f.std()), "
            "len(np.unique(f.reshape(-1, 3), axis=0))]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=OFFSCREEN, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    shape, dtype, std, colours = json.loads(result.stdout.splitlines()[-1])
    assert shape == [240, 320, 3] and dtype == "uint8" and std > 10 and colours > 50


def test_every_script_captures_with_the_same_code():
    import inspect

    for function in ("capture_video", "settled_step"):
        sources = {script: inspect.getsource(getattr(__import__(script), function)) for script in SCRIPTS}
        assert len(set(sources.values())) == 1, function


def test_point_robot_pictures_of_every_task_and_their_trajectories(data_dir, tmp_path):
    script = "metanf"  # the others capture with the same code (above); metanf's codes come from its selection
    run(script, tmp_path, *tiny(script), "--data-dir", data_dir, "--capture-video")
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "*"))
    names = sorted(os.listdir(os.path.join(run_dir, "videos")))
    assert names == ["test_task02.png", "test_task03.png", "train_task00.png", "train_task01.png", "trajectories.json"]
    assert all(os.path.getsize(os.path.join(run_dir, "videos", n)) > 5000 for n in names[:4])
    with open(os.path.join(run_dir, "videos", "trajectories.json")) as f:
        trajectories = json.load(f)
    episode = trajectories["test"]["2"]
    assert len(episode["states"]) == 21 and 0 <= episode["settled"] <= 20 and len(episode["goal"]) == 2
    # the recorded episode is the evaluation's zero-shot episode 0: its rewards give the return of that episode
    from common.envs import make_env

    env = make_env("point-robot", 2, 4)
    env.reset(seed=0)
    goal = np.array(env.unwrapped.task["goal"])
    assert np.allclose(episode["goal"], goal) and np.allclose(episode["states"][0], env.reset(seed=0)[0])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir)
    events.Reload()
    assert "videos/test_task02" in events.Tags()["images"]


def test_mujoco_videos_are_mp4s_rendered_offscreen(tmp_path):
    data = tmp_path / "data"
    collect = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "cheetah-vel", "--n-tasks", "2", "--n-train",
               "1", "--out-dir", str(data), "--sac-steps", "150", "--learning-starts", "100", "--batch-size", "16",
               "--num-trajectories", "1", "--random-episodes", "1", "--log-every", "150"]
    subprocess.run(collect, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    flags = ["--env", "cheetah-vel", "--n-tasks", "2", "--n-train", "1", "--total-steps", "4", "--eval-every", "4",
             "--log-every", "2", "--eval-episodes", "1", "--meta-batch-size", "2", "--batch-size", "16", "--data-dir",
             str(data), "--capture-video"]
    command = [sys.executable, os.path.join(ROOT, "focal.py"), *flags]
    without_display = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY")}
    refused = subprocess.run(command, cwd=tmp_path, env=without_display, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "MUJOCO_GL=egl" in refused.stderr and not (tmp_path / "runs").exists()
    result = subprocess.run(command, cwd=tmp_path, env=OFFSCREEN, capture_output=True, text=True, timeout=300)
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:  # optional: the error names the install command
        assert result.returncode == 2 and "python -m pip install imageio-ffmpeg" in result.stderr
        return
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "*"))
    assert sorted(os.listdir(os.path.join(run_dir, "videos"))) == ["test_task01.mp4", "train_task00.mp4"]
    import imageio.v3 as iio

    frames = iio.imread(os.path.join(run_dir, "videos", "train_task00.mp4"))
    assert frames.shape == (201, 240, 320, 3) and frames.std() > 10  # the start and the 200 steps of the episode


def test_report_draws_each_columns_test_trajectories(tmp_path):
    from test_benchmark import write_run

    runs = str(tmp_path / "runs")
    for seed in (0, 1):
        run_dir = write_run(runs, "point-robot", "focal", seed, 5, -10.0, -15.0)
        if seed == 1:
            os.makedirs(os.path.join(run_dir, "videos"))
            states = [[0.1 * t, -0.05 * t] for t in range(21)]
            with open(os.path.join(run_dir, "videos", "trajectories.json"), "w") as f:
                json.dump({"test": {str(i): {"states": states, "goal": [0.5, -0.5], "settled": 4} for i in (10, 11, 12)}}, f)
        write_run(runs, "point-robot", "unicorn", seed, 5, -10.0, -15.0)
    out = tmp_path / "results"
    benchmark.report(benchmark.Report(runs_dir=runs, out_dir=str(out)))
    assert (out / "point-robot_focal_trajectories.png").stat().st_size > 10000
    assert not (out / "point-robot_unicorn_trajectories.png").exists()  # no run of it captured any
    assert "![point-robot_focal_trajectories.png](point-robot_focal_trajectories.png)" in (out / "point-robot.md").read_text()
    archived = tmp_path / "archive"
    benchmark.archive(benchmark.Archive(runs_dir=runs, out_dir=str(archived)))
    assert len(glob.glob(str(archived / "*" / "videos" / "trajectories.json"))) == 1  # kept for the report
