# Zero-shot diagnosis of trained Meta-NF checkpoints on point-robot: does a policy lose return because it cannot steer
# to a known goal, or because its own transitions identify the task badly? For every run it replays the zero-shot
# evaluation of metanf.py (same episodes, same seeds; the returns must equal the run's results.json) with and without
# the selection, and measures at each step how far the code that conditions the action lies from the task's offline
# code (the mean code of all the task's offline transitions), and whether that offline code is the nearest of the
# task set's; as a control for the encoder, the same for the few-shot protocol's offline contexts. The few-shot return
# (an offline context) is read from results.json; "saturated actions" is the share of action components beyond
# +-0.99 in the zero-shot episodes (moves at full speed).
#
#   python results/tools/diagnose_zero_shot.py --exps metanf metanf-no-flow --total-steps 200000   # from the repository root
import glob
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import metanf  # noqa: E402
from common.datasets import TaskBatchSampler, load_dataset  # noqa: E402
from common.envs import HORIZONS, make_env, train_test_split  # noqa: E402


@dataclass
class Args:
    exps: tuple[str, ...] = ("metanf", "metanf-no-flow")
    """the metanf.py experiment names (runs/point-robot__{exp}__{seed}__*) to diagnose"""
    total_steps: int = 200000
    """only runs whose results.json is at this step"""
    runs_dir: str = "runs"
    """where the runs are"""


@torch.no_grad()
def diagnose(agent, envs, sampler, args, obs_mean, obs_std, selection: bool) -> dict:
    n, horizon = len(envs), HORIZONS[args.env]
    mean, std = torch.as_tensor(obs_mean), torch.as_tensor(obs_std)
    fields = ("observations", "actions", "rewards", "next_observations")
    task_codes = torch.stack([
        agent.context_codes(metanf.transition_inputs({k: getattr(sampler, k)[i, : sampler.sizes[i]] for k in fields})).mean(0)
        for i in range(n)
    ])
    returns, final_distance, code_distance, identified = np.zeros((n, args.eval_episodes)), [], [], []
    action_generator = torch.Generator().manual_seed(args.seed)  # as metanf.evaluate's, for --act sample and best-of-n
    saturated = []
    for episode in range(args.eval_episodes):
        obs = np.stack([env.reset(seed=args.seed + episode)[0] for env in envs])
        selector = metanf.RepresentationSelector(agent.decoder, n, horizon, args.latent_dim, torch.device("cpu"))
        selector.reset()
        code_sum = torch.zeros(n, args.latent_dim)
        for t in range(horizon):
            obs_t = (torch.as_tensor(obs, dtype=torch.float32) - mean) / std
            z = selector.z if selection else code_sum / max(t, 1)
            if t > 0:  # z = 0 at the first step, the same for every task
                distances = torch.cdist(z, task_codes)
                code_distance.append((distances.diagonal() / distances.mean(1)).numpy())
                identified.append((distances.argmin(1) == torch.arange(n)).numpy())
            actions = agent.evaluation_action(obs_t, z, action_generator).numpy()
            saturated.append(np.abs(actions) > 0.99)
            next_obs, rewards = obs.copy(), np.zeros(n, dtype=np.float32)
            for j, env in enumerate(envs):
                next_obs[j], rewards[j], terminated, truncated, _ = env.step(actions[j])
                assert not terminated and (truncated == (t == horizon - 1))
            returns[:, episode] += rewards
            transition = {
                "observations": obs_t,
                "actions": torch.as_tensor(actions),
                "rewards": torch.as_tensor(rewards)[:, None],
                "next_observations": (torch.as_tensor(next_obs, dtype=torch.float32) - mean) / std,
            }
            codes = agent.context_codes(metanf.transition_inputs(transition))
            code_sum += codes
            selector.add(transition, codes)
            obs = next_obs
        final_distance.append(-rewards)  # point-robot: r = -||s' - goal||
    # control for the encoder: the same test with the few-shot protocol's offline contexts, one per task and episode
    generator = torch.Generator().manual_seed(args.seed)
    offline_identified = []
    for _ in range(args.eval_episodes):
        context, _ = sampler.sample_context(torch.arange(n), args.few_shot_context, generator=generator)
        z = agent.context_codes(metanf.transition_inputs(context)).mean(1)
        offline_identified.append((torch.cdist(z, task_codes).argmin(1) == torch.arange(n)).numpy())
    return {
        "return": returns.mean(1).mean(),
        "final_distance": np.mean(final_distance),
        "code_distance": np.mean(code_distance),
        "identified": np.mean(identified),
        "offline_identified": np.mean(offline_identified),
        "saturated": np.mean(saturated),
    }


if __name__ == "__main__":
    cli = tyro.cli(Args)
    torch.set_num_threads(1)
    rows = {}
    for exp in cli.exps:
        for run_dir in sorted(glob.glob(os.path.join(cli.runs_dir, f"point-robot__{exp}__*"))):
            path = os.path.join(run_dir, "results.json")
            if not os.path.exists(path) or not os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
                continue
            results = json.load(open(path))
            if results["step"] != cli.total_steps or "checkpoint" in results:  # an --eval-only run has no own training
                continue
            checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)
            args = metanf.Args(**checkpoint["args"])
            train_ids, test_ids = train_test_split(args.env, args.n_tasks, args.n_train)
            dataset = load_dataset(args.env, args.behavior, args.data_dir, sorted(set(train_ids + test_ids)), args.n_tasks,
                                   args.task_seed)
            agent = metanf.MetaNF(dataset.obs_dim, dataset.act_dim, args, torch.device("cpu"))
            agent.load_state_dict(checkpoint["agent"])
            for name, ids in (("train", train_ids), ("test", test_ids)):
                sampler = TaskBatchSampler(dataset, ids, checkpoint["obs_mean"], checkpoint["obs_std"], torch.device("cpu"))
                envs = [make_env(args.env, i, args.n_tasks, args.task_seed) for i in ids]
                for selection in (True, False):
                    row = diagnose(agent, envs, sampler, args, checkpoint["obs_mean"], checkpoint["obs_std"], selection)
                    if selection == args.selection:
                        logged = results["zero_shot"][name]["mean"]
                        assert abs(row["return"] - logged) < 1e-3, f"{run_dir}: replayed {row['return']}, logged {logged}"
                    row["few_shot"] = results["few_shot"][name]["mean"]
                    rows.setdefault((exp, name, selection), []).append(row)
                    print(f"{run_dir} {name} {'selection' if selection else 'mean code'}: "
                          + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    columns = ["experiment", "tasks", "z", "seeds", "zero-shot return", "final distance", "code distance", "task identified",
               "identified, offline context", "saturated actions", "few-shot return"]
    print("\n| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for (exp, name, selection), runs in rows.items():
        cells = [f"{np.mean([r[k] for r in runs]):.2f} ± {np.std([r[k] for r in runs]):.2f}"
                 for k in ("return", "final_distance", "code_distance", "identified", "offline_identified", "saturated",
                           "few_shot")]
        print(f"| {exp} | {name} | {'selected' if selection else 'mean'} | {len(runs)} | " + " | ".join(cells) + " |")
