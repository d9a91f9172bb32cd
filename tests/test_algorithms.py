import glob
import json
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import csro  # noqa: E402
import focal  # noqa: E402
import gentle  # noqa: E402
import metanf  # noqa: E402
import select_omrl  # noqa: E402
import unicorn  # noqa: E402


def resolved(module, **values):
    """A script's Args for these values, as its command line resolves them: its family's defaults, then those that
    depend on other arguments."""
    env = values.get("env", module.Args.env)
    return module.resolve_unset(module.Args(**{**module.env_defaults(env), **values}))

SCRIPTS = ["focal", "unicorn", "metanf", "csro", "select_omrl", "gentle"]
# past every warm-up: the actor is updated every 2nd step, losses logged every 10, evaluated at 20 and 40
TINY = ["--env", "point-robot", "--n-tasks", "4", "--n-train", "2", "--total-steps", "40", "--eval-every", "20",
        "--log-every", "10", "--eval-episodes", "2", "--meta-batch-size", "4", "--batch-size", "32"]
REPRESENTATION_TAGS = {
    "focal": {"losses/focal_loss"},
    "csro": {"losses/focal_loss", "losses/club_loss", "losses/club_model_loss"},
    "select_omrl": {"losses/focal_loss", "losses/club_loss", "losses/club_model_loss", "losses/value_loss",
                    "losses/bc_weight", "losses/advantage_std", "eval/proximal/train_online_return", "eval/proximal/test_online_return"},
    "unicorn": {"losses/focal_loss", "losses/recon_loss"},
    "gentle": {"losses/tae_loss", "dynamics/holdout_mse", "dynamics/fit_time"},
    "metanf": {"losses/focal_loss", "losses/recon_loss", "diagnostics/actor_grad_norm_q", "diagnostics/actor_grad_norm_bc",
               "diagnostics/action_sq_distance"},
}
# each script's own online protocols, beside zero-shot and few-shot
ONLINE_PROTOCOLS = {"focal": (), "unicorn": (), "metanf": (), "csro": ("non_prior",),
                    "select_omrl": ("non_prior", "proximal"), "gentle": ("one_shot",)}


def tiny(script):
    """TINY for one script: CSRO, SELECT and GENTLE draw their meta-batch without replacement, so from the 2 training
    tasks at most; SELECT's default data are mixed, the test's are expert; GENTLE's ensembles fit for a few epochs and
    its pseudo-transitions are rebuilt at steps 0 and 20."""
    if script not in ("csro", "select_omrl", "gentle"):
        return TINY
    i = TINY.index("--meta-batch-size")
    own = {"csro": [], "select_omrl": ["--behavior", "expert"],
           "gentle": ["--ensemble-max-epochs", "5", "--relabel-every", "20", "--relabel-states", "64"]}
    return TINY[: i + 1] + ["2"] + TINY[i + 2 :] + own[script]


def run(script, cwd, *extra, check=True):
    command = [sys.executable, os.path.join(ROOT, f"{script}.py"), *extra]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """One tiny training run per script: {script: (cwd, run_dir)}."""
    runs = {}
    for script in SCRIPTS:
        cwd = tmp_path_factory.mktemp(script)
        run(script, cwd, *tiny(script), "--data-dir", data_dir)
        (run_dir,) = glob.glob(str(cwd / "runs" / f"point-robot__{script}__0__*"))
        runs[script] = (cwd, run_dir)
    return runs


def load_results(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_outputs(trained, script):
    _, run_dir = trained[script]
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"losses/qf1_loss", "losses/qf2_loss", "losses/actor_loss", "losses/bc_loss", "losses/representation_loss",
                "charts/SPS", "eval/zero_shot/train_return", "eval/zero_shot/test_return", "eval/few_shot/train_return",
                "eval/few_shot/test_return"} | REPRESENTATION_TAGS[script]
    expected |= {f"eval/{protocol}/{s}_return" for protocol in ONLINE_PROTOCOLS[script] for s in ("train", "test")}
    assert expected <= tags, expected - tags
    assert [e.step for e in events.Scalars("eval/zero_shot/test_return")] == [20, 40]
    assert [e.step for e in events.Scalars("losses/actor_loss")] == [10, 20, 30, 40]
    results = load_results(run_dir)
    assert results["algorithm"] == script and results["step"] == 40 == results["total_steps"]
    assert {"zero_shot", "few_shot", *ONLINE_PROTOCOLS[script]} <= set(results)
    for protocol in ("zero_shot", "few_shot", *ONLINE_PROTOCOLS[script]):
        assert set(results[protocol]["train"]["per_task"]) == {"0", "1"}
        assert set(results[protocol]["test"]["per_task"]) == {"2", "3"}
        per_task = list(results[protocol]["test"]["per_task"].values())
        assert results[protocol]["test"]["mean"] == pytest.approx(np.mean(per_task))
        # point-robot rewards are negative distances: a 20-step return lies in (-20 * 2.9, 0)
        assert all(-58 < r < 0 for r in per_task)
    assert results["zero_shot"]["test"]["mean"] == pytest.approx(events.Scalars("eval/zero_shot/test_return")[-1].value)
    # the machine the wall time was measured on, for the report's runtime table
    assert results["wall_time"] > 0 and results["machine"].endswith(f", {os.cpu_count()} CPU cores, {platform.platform()}")
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert checkpoint["algorithm"] == script and checkpoint["step"] == 40 and checkpoint["args"]["env"] == "point-robot"
    assert {"actor", "qf1", "qf2", "qf1_target", "qf2_target", "actor_target", "encoder", "actor_optimizer",
            "q_optimizer", "encoder_optimizer"} <= set(checkpoint["agent"])
    assert checkpoint["obs_mean"].shape == checkpoint["obs_std"].shape == (2,)
    assert ("value_net" in checkpoint["agent"]) == (script == "select_omrl")
    # every random generator the scripts draw from, so that a resumed run goes on with the same streams
    assert {"rng_state", "cuda_rng_state", "numpy_rng_state", "python_rng_state"} <= set(checkpoint)
    # the data the numbers come from, and that a resume must find again (a sha256 prefix of the loaded arrays)
    assert results["data_fingerprint"] == checkpoint["data_fingerprint"] and len(checkpoint["data_fingerprint"]) == 16
    int(checkpoint["data_fingerprint"], 16)
    with open(os.path.join(run_dir, "args.json")) as f:
        assert json.load(f)["total_steps"] == 40
    assert not os.path.exists(os.path.join(run_dir, "videos"))  # --capture-video is off by default


@pytest.mark.parametrize("script", SCRIPTS)
def test_eval_only_reproduces_saved_numbers(trained, data_dir, script):
    cwd, run_dir = trained[script]
    run(script, cwd, "--env", "point-robot", "--data-dir", data_dir, "--eval-only", "--checkpoint",
        os.path.join(run_dir, "checkpoint.pt"))
    (eval_dir,) = glob.glob(str(cwd / "runs" / f"point-robot__{script}_eval__0__*"))
    saved, reproduced = load_results(run_dir), load_results(eval_dir)
    for protocol in ("zero_shot", "few_shot", *ONLINE_PROTOCOLS[script]):
        assert reproduced[protocol] == saved[protocol]
    assert (reproduced["step"], reproduced["total_steps"]) == (saved["step"], saved["total_steps"])
    assert reproduced["checkpoint"].endswith("checkpoint.pt")


def test_metanf_selection_is_chosen_at_evaluation(trained, data_dir, tmp_path):
    _, run_dir = trained["metanf"]
    run("metanf", tmp_path, "--env", "point-robot", "--data-dir", data_dir, "--eval-only", "--no-selection",
        "--exp-name", "metanf-no-selection", "--checkpoint", os.path.join(run_dir, "checkpoint.pt"))
    (eval_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__metanf-no-selection_eval__0__*"))
    saved, mean_code = load_results(run_dir), load_results(eval_dir)
    assert mean_code["few_shot"] == saved["few_shot"]  # selection only changes the zero-shot z
    assert mean_code["zero_shot"] != saved["zero_shot"]


def test_metanf_acting_rule_is_chosen_at_evaluation_and_sampling_is_reproducible(trained, data_dir, tmp_path):
    _, run_dir = trained["metanf"]
    results = {}
    for i, act in enumerate(("sample", "zero", "best-of-n")):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        run("metanf", cwd, "--env", "point-robot", "--data-dir", data_dir, "--eval-only", "--act", act,
            "--checkpoint", os.path.join(run_dir, "checkpoint.pt"))
        (eval_dir,) = glob.glob(str(cwd / "runs" / "point-robot__metanf_eval__0__*"))
        results[i] = load_results(eval_dir)
        with open(os.path.join(eval_dir, "args.json")) as f:
            assert json.load(f)["act"] == act
    saved = load_results(run_dir)  # trained with the flow's default, --act sample: its evaluation is reproduced exactly
    assert results[0]["zero_shot"] == saved["zero_shot"] and results[0]["few_shot"] == saved["few_shot"]
    assert results[1]["zero_shot"] != saved["zero_shot"] and results[2]["few_shot"] != saved["few_shot"]


def test_zero_shot_diagnosis_replays_the_logged_evaluation(trained, tmp_path):
    cwd, run_dir = trained["metanf"]
    script = os.path.join(ROOT, "results", "tools", "diagnose_zero_shot.py")
    result = subprocess.run([sys.executable, script, "--exps", "metanf", "--total-steps", "40", "--runs-dir",
                             str(cwd / "runs")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr  # it asserts its replay equals results.json
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| metanf |")]
    assert [(r[1], r[2], r[3]) for r in rows] == [("train", "selected", "1"), ("train", "mean", "1"),
                                                  ("test", "selected", "1"), ("test", "mean", "1")]
    saved = load_results(run_dir)
    for r in rows:
        zero_shot, few_shot = (float(r[i].split(" ± ")[0]) for i in (4, 10))
        if r[2] == "selected":
            assert zero_shot == pytest.approx(saved["zero_shot"][r[1]]["mean"], abs=0.006)
        assert few_shot == pytest.approx(saved["few_shot"][r[1]]["mean"], abs=0.006)
        for i in (7, 8, 9):  # shares: codes nearest their own task's offline code, saturated actions
            assert 0.0 <= float(r[i].split(" ± ")[0]) <= 1.0


def test_same_seed_same_results(trained, data_dir, tmp_path):
    run("unicorn", tmp_path, *TINY, "--data-dir", data_dir)
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__unicorn__0__*"))
    first, second = load_results(trained["unicorn"][1]), load_results(run_dir)
    for key in ("wall_time", "updates_per_second"):
        first.pop(key), second.pop(key)
    assert first == second


def interrupted_unicorn_run(cwd, data_dir) -> tuple:
    """A TINY unicorn run in cwd stopped after its step-20 checkpoint: (its folder, the checkpoint's path and content)."""
    run("unicorn", cwd, *[a if a != "40" else "20" for a in TINY], "--data-dir", data_dir)
    (run_dir,) = glob.glob(str(cwd / "runs" / "point-robot__unicorn__0__*"))
    path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["args"]["total_steps"] = 40  # as if a 40-step run had stopped after its step-20 checkpoint
    torch.save(checkpoint, path)
    return run_dir, path, checkpoint


def test_interrupted_run_resumes_in_its_folder_like_an_uninterrupted_run(trained, data_dir, tmp_path):
    run_dir, path, checkpoint = interrupted_unicorn_run(tmp_path, data_dir)
    (tmp_path / "elsewhere").mkdir()
    run("unicorn", tmp_path / "elsewhere", *TINY, "--data-dir", data_dir, "--checkpoint", path)
    assert not (tmp_path / "elsewhere" / "runs").exists()  # it went on in its own folder
    resumed, uninterrupted = load_results(run_dir), load_results(trained["unicorn"][1])
    assert resumed["step"] == 40 and resumed["wall_time"] > checkpoint["wall_time"]
    for protocol in ("zero_shot", "few_shot"):
        assert resumed[protocol] == uninterrupted[protocol]
    events = EventAccumulator(run_dir)
    events.Reload()
    assert [e.step for e in events.Scalars("eval/zero_shot/test_return")] == [20, 40]
    # a finished run trained further gets a new folder; the finished one stays as it was
    run("unicorn", tmp_path, *[a if a != "40" else "60" for a in TINY], "--data-dir", data_dir, "--checkpoint", path)
    assert load_results(run_dir)["step"] == 40
    (longer,) = set(glob.glob(str(tmp_path / "runs" / "point-robot__unicorn__0__*"))) - {run_dir}
    assert load_results(longer)["step"] == 60


def test_metanf_without_flow_and_selection_trains_exactly_unicorn(trained, data_dir, tmp_path):
    run("metanf", tmp_path, *TINY, "--data-dir", data_dir, "--no-flow", "--no-selection")
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__metanf__0__*"))
    ablation, reference = load_results(run_dir), load_results(trained["unicorn"][1])
    for protocol in ("zero_shot", "few_shot"):
        assert ablation[protocol] == reference[protocol]
    # and the full method is a different model
    assert load_results(trained["metanf"][1])["zero_shot"] != reference["zero_shot"]


def test_select_without_weighting_trains_exactly_csro(trained, data_dir, tmp_path):
    run("select_omrl", tmp_path, *tiny("select_omrl"), "--data-dir", data_dir, "--no-weighted-bc")
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__select_omrl__0__*"))
    ablation, reference = load_results(run_dir), load_results(trained["csro"][1])
    for protocol in ("zero_shot", "few_shot", "non_prior"):
        assert ablation[protocol] == reference[protocol]
    assert "proximal" in ablation and "value_net" not in torch.load(os.path.join(run_dir, "checkpoint.pt"),
                                                                    weights_only=False)["agent"]
    # and the weighted BC is a different model
    assert load_results(trained["select_omrl"][1])["zero_shot"] != reference["zero_shot"]


def test_select_proximal_results_and_eval_only_settings(trained, data_dir, tmp_path):
    _, run_dir = trained["select_omrl"]
    proximal = load_results(run_dir)["proximal"]
    for task_set, ids in (("train", {"0", "1"}), ("test", {"2", "3"})):
        assert set(proximal["online"][task_set]["per_task"]) == ids
        assert len(proximal["by_episode"][task_set]) == 20  # point-robot: 400 non-prior steps / horizon 20
        # the last scored episode, averaged over tasks, is the protocol's score
        assert proximal["by_episode"][task_set][-1] == pytest.approx(proximal[task_set]["mean"])
    run("select_omrl", tmp_path, "--env", "point-robot", "--data-dir", data_dir, "--eval-only", "--proximal-episodes", "2",
        "--checkpoint", os.path.join(run_dir, "checkpoint.pt"))
    (eval_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__select_omrl_eval__0__*"))
    assert len(load_results(eval_dir)["proximal"]["by_episode"]["test"]) == 2


def test_gentle_without_pseudo_transitions_fits_no_ensemble(trained, data_dir, tmp_path):
    result = run("gentle", tmp_path, *tiny("gentle"), "--data-dir", data_dir, "--no-pseudo-transitions",
                 "--dynamics-dir", str(tmp_path / "dynamics"))
    assert "dynamics ensembles" not in result.stdout and not (tmp_path / "dynamics").exists()
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__gentle__0__*"))
    events = EventAccumulator(run_dir)
    events.Reload()
    assert "dynamics/holdout_mse" not in events.Tags()["scalars"] and "losses/tae_loss" in events.Tags()["scalars"]
    plain, augmented = load_results(run_dir), load_results(trained["gentle"][1])
    assert {"zero_shot", "few_shot", "one_shot"} <= set(plain) and plain["zero_shot"] != augmented["zero_shot"]
    # each run seed fits its own ensembles (GENTLE fits them in every run); a second run of that seed loads them
    dynamics = ["--dynamics-dir", str(tmp_path / "seed1")]
    first = run("gentle", tmp_path, *tiny("gentle"), "--data-dir", data_dir, "--seed", "1", *dynamics)
    again = run("gentle", tmp_path, *tiny("gentle"), "--data-dir", data_dir, "--seed", "1", *dynamics)
    assert "dynamics ensembles: fitting" in first.stdout and "dynamics ensembles: loaded" in again.stdout


def test_gentle_resumes_with_the_pseudo_transitions_of_an_uninterrupted_run(trained, data_dir, tmp_path):
    run("gentle", tmp_path, *[a if a != "40" else "20" for a in tiny("gentle")], "--data-dir", data_dir)
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__gentle__0__*"))
    path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["args"]["total_steps"] = 40
    torch.save(checkpoint, path)
    run("gentle", tmp_path, *tiny("gentle"), "--data-dir", data_dir, "--checkpoint", path)
    resumed, uninterrupted = load_results(run_dir), load_results(trained["gentle"][1])
    for protocol in ("zero_shot", "few_shot", "one_shot"):
        assert resumed[protocol] == uninterrupted[protocol]


def test_checkpoint_of_other_algorithm_or_env_is_refused(trained, data_dir, tmp_path):
    focal_checkpoint = os.path.join(trained["focal"][1], "checkpoint.pt")
    result = run("unicorn", tmp_path, "--eval-only", "--checkpoint", focal_checkpoint, "--data-dir", data_dir, check=False)
    assert result.returncode != 0 and "is a checkpoint of 'focal', not of unicorn" in result.stderr
    result = run("focal", tmp_path, "--env", "ant-dir", "--eval-only", "--checkpoint", focal_checkpoint, check=False)
    assert result.returncode != 0 and "was trained on point-robot, not ant-dir" in result.stderr


def test_non_finite_loss_stops_the_run(data_dir, tmp_path):
    result = run("focal", tmp_path, *TINY, "--data-dir", data_dir, "--reward-scale", "1e38", check=False)  # (5r)^2 overflows
    assert result.returncode != 0
    assert "losses/qf1_loss" in result.stderr and "became non-finite between steps 0 and 10" in result.stderr
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "point-robot__focal__0__*"))
    assert not os.path.exists(os.path.join(run_dir, "checkpoint.pt"))  # no checkpoint of a broken model is written


def test_missing_dataset_and_unknown_env(tmp_path):
    result = run("focal", tmp_path, "--env", "cheetah-vel", "--data-dir", str(tmp_path), check=False)
    assert result.returncode != 0 and "python collect_data.py --env cheetah-vel --behavior expert" in result.stderr
    result = run("unicorn", tmp_path, "--env", "cheetah-speed", check=False)
    assert result.returncode != 0 and "valid names are: point-robot" in result.stderr


def test_focal_distance_loss_hand_computed():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    task_idx = torch.tensor([0, 1, 0, 1])
    # pairs: (0,1) diff, d=0.5; (0,2) same, d=0; (0,3) diff, d=1; (1,2) diff, d=0.5; (1,3) same, d=0.5; (2,3) diff, d=1
    positive = (math.sqrt(0 + 1e-3) + math.sqrt(0.5 + 1e-3)) / (2 + 1e-3)
    negative = (1 / 0.6 + 1 / 1.1 + 1 / 0.6 + 1 / 1.1) / (4 + 1e-3)
    for module in (focal, unicorn, metanf, csro, select_omrl):
        assert module.focal_distance_loss(z, task_idx).item() == pytest.approx(positive + negative, rel=1e-6)


def test_gaussian_nll_hand_computed():
    mean = torch.tensor([[1.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    target = torch.zeros(1, 2)
    # ((1 - 0)^2 * e^0 + 0 + (2 - 0)^2 / 2 + log 2) / 2
    assert unicorn.gaussian_nll(mean, logvar, target).item() == pytest.approx((1 + 2 + math.log(2)) / 2, rel=1e-6)


def test_gaussian_head_soft_bounds_logvar():
    head = unicorn.GaussianHead(3, 2, 8)
    with torch.no_grad():
        head.net[-1].bias.copy_(torch.tensor([0.0, 0.0, 100.0, -100.0]))
    _, logvar = head(torch.zeros(1, 3))
    assert logvar[0, 0].item() == pytest.approx(0.5, abs=1e-3)  # pushed to max_logvar
    assert logvar[0, 1].item() == pytest.approx(-10.0, abs=1e-3)  # pushed to min_logvar
    assert head.bound_loss().item() == pytest.approx(0.01 * (2 * 0.5 + 2 * 10.0))


def test_masked_mean_and_empty_context():
    codes = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    mask = torch.tensor([[[1.0], [1.0], [0.0]], [[0.0], [0.0], [0.0]]])
    np.testing.assert_allclose(unicorn.masked_mean(codes, mask).numpy(), [[2.0], [0.0]])


@pytest.mark.parametrize("script", SCRIPTS)
def test_update_stays_on_its_device_and_never_reads_a_value_back(script):
    """Every tensor of a gradient step on the meta device (shapes without data): a tensor made on the CPU by mistake
    fails on mixing devices, and a host synchronization (.item(), bool(), a Python branch on a value) fails for lack of
    data. So an update that runs here keeps to the training device and never waits for it."""
    module = {"focal": focal, "unicorn": unicorn, "metanf": metanf, "csro": csro, "select_omrl": select_omrl,
              "gentle": gentle}[script]
    args = resolved(module, env="point-robot")
    device = torch.device("meta")
    agent_class = next(v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "NETWORKS"))
    agent = agent_class(2, 2, args, device)
    m = args.meta_batch_size

    def fields(rows):
        shapes = {"observations": 2, "actions": 2, "rewards": 1, "next_observations": 2, "terminations": 1}
        return {k: torch.zeros(m, rows, d, device=device) for k, d in shapes.items()}

    for _ in range(2):  # a critic-only step and an actor step
        log = agent.update(fields(args.batch_size), fields(args.context_size), torch.ones(m, args.context_size, 1,
                           device=device), torch.arange(m, device=device))
    assert {v.device.type for v in log.values()} == {"meta"} and "losses/actor_loss" in log
