# How good are GENTLE's pseudo-transition labels on point-robot? gentle.py labels the (s, a) of training task i with the
# dynamics ensemble of task i (its own pseudo-transitions) and with those of 3 other training tasks j (the cross-task
# ones, about 3 of every 4 pseudo-transitions of a task). Point-robot's reward is known in closed form,
# r_j(s, a) = -|s + 0.1 a - g_j|, so every label can be checked: this prints the RMSE of the ensembles' mean reward
# prediction on each training task's offline (s, a) against the true reward of the labelling task, own task and cross
# task apart, beside the spread of the true rewards (a label that ignored (s, a) would have an RMSE about that large).
# It fits the ensembles as gentle.py does (or loads gentle.py's cached fit of the same data and settings).
#
#   python results/tools/diagnose_gentle_labels.py   # from the repository root, after collect_data.py --env point-robot
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import gentle  # noqa: E402
from common.datasets import TaskBatchSampler, load_dataset, normalization_stats  # noqa: E402
from common.envs import get_tasks, train_test_split  # noqa: E402


@dataclass
class Args:
    data_dir: str = "data"
    """root of the datasets (collect_data.py's --out-dir)"""
    behavior: str = "expert"
    """which point-robot dataset"""
    states: int = 2560
    """offline (s, a) per training task to label (GENTLE relabels 2560 states per task)"""
    seed: int = 0
    """seed of the sampled transitions"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.manual_seed(args.seed)
    gentle_args = gentle.resolve_unset(gentle.Args(env="point-robot", data_dir=args.data_dir, behavior=args.behavior,
                                                    **gentle.env_defaults("point-robot")))
    dataset = load_dataset("point-robot", args.behavior, args.data_dir)
    train_ids, _ = train_test_split("point-robot", len(get_tasks("point-robot")), gentle_args.n_train)
    obs_mean, obs_std = normalization_stats(dataset, train_ids)
    sampler = TaskBatchSampler(dataset, train_ids, obs_mean, obs_std, torch.device("cpu"))
    ensemble, _ = gentle.load_or_fit_dynamics(sampler, dataset.obs_dim, dataset.act_dim, gentle_args, torch.device("cpu"))
    goals = np.array([get_tasks("point-robot")[i]["goal"] for i in train_ids])
    n_tasks = len(train_ids)
    real = sampler.sample(torch.arange(n_tasks), args.states)
    states = real["observations"].numpy() * np.asarray(obs_std) + np.asarray(obs_mean)
    next_states = states + 0.1 * real["actions"].numpy()
    inputs = torch.cat([real["observations"], real["actions"]], -1)[:, None]
    rmse = np.zeros((n_tasks, n_tasks))  # [task of the (s, a), task of the ensemble]
    true_rewards = []
    with torch.no_grad():
        for j in range(n_tasks):
            labels = ensemble(inputs, torch.full((n_tasks,), j)).mean(1)[..., 0].numpy()
            truth = -np.linalg.norm(next_states - goals[j], axis=-1)
            rmse[:, j] = np.sqrt(((labels - truth) ** 2).mean(1))
            true_rewards.append(truth)
    cross = rmse[~np.eye(n_tasks, dtype=bool)]
    print(f"point-robot {args.behavior} data, {n_tasks} training tasks, {args.states} offline (s, a) each")
    print(f"reward-label RMSE, own task:   mean {np.diag(rmse).mean():.3f} (per task {np.diag(rmse).round(3).tolist()})")
    print(f"reward-label RMSE, cross task: mean {cross.mean():.3f}, median {np.median(cross):.3f}, max {cross.max():.3f}")
    spread = np.mean([np.std(truth) for truth in true_rewards])  # the RMSE of a label that is each task's mean reward
    print(f"std of the true rewards of those (s, a) under a labelling task, mean over tasks: {spread:.3f}")
