# Offline datasets for OMRL: one SAC agent per task, trained together as one batched model, then rolled out.
# SAC as in CleanRL's sac_continuous_action.py (https://github.com/vwxyzjn/cleanrl); data protocols of the rlkit lineage
# (expert: GENTLE / Meta-NF, mixed: CSRO / SELECT) and of CORRO / UNICORN (replay). See docs/collect_data.md.
import datetime
import json
import math
import os
import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass, fields
from typing import List, Literal, Optional

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

from common.datasets import (
    FORMAT_VERSION,
    atomic_write,
    atomic_write_json,
    dataset_dir,
    episode_returns,
    save_task_data,
    task_file,
)
from common.envs import ENV_NAMES, HORIZONS, get_tasks, make_env, num_tasks, train_test_split

DEFAULT_SAC_STEPS = {"point-robot": 20_000}  # MuJoCo families: 1_000_000, the GENTLE / CSRO budget
DEFAULT_LEARNING_STARTS = {"point-robot": 2_000}  # MuJoCo families: 5_000 (GENTLE)
DEFAULT_HIDDEN_DIM = {"point-robot": 64}  # MuJoCo families: 256 (CleanRL)


@dataclass
class Args:
    env: str = "point-robot"
    """task family, one of: point-robot, cheetah-vel, cheetah-dir, ant-dir, humanoid-dir, hopper-params, walker-params"""
    tasks: Optional[List[int]] = None
    """task ids to collect (if unset: every task of the task set, train and test)"""
    behavior: Literal["expert", "mixed", "replay"] = "expert"
    """expert: the final SAC policy's rollouts; mixed: rollouts of evenly spaced SAC checkpoints; replay: SAC's whole buffer"""
    sac_steps: Optional[int] = None
    """SAC environment steps per task (if unset: 20_000 for point-robot, 1_000_000 otherwise)"""
    num_trajectories: Optional[int] = None
    """stochastic trajectories per task for expert and mixed (if unset: 50; 100 for point-robot and cheetah-dir)"""
    num_checkpoints: int = 10
    """mixed: the number of evenly spaced SAC checkpoints (steps S*k/K, k = 1..K) that share the trajectories"""
    out_dir: str = "data"
    """root folder of the datasets: {out_dir}/{env}/{behavior}/task_XX.npz, SAC checkpoints in {out_dir}/{env}/sac/"""
    seed: int = 0
    """collection seed (networks, SAC sampling, env resets)"""
    device: str = "auto"
    """torch device for SAC; auto: cuda when available"""
    n_tasks: int = 20
    """number of tasks in the task set (cheetah-dir: always 2)"""
    task_seed: int = 1337
    """seed of the task set"""
    n_train: int = 10
    """the first n_train tasks are the training tasks, the rest the test tasks (recorded in metadata.json)"""
    tasks_per_batch: int = 20
    """how many tasks' SAC agents are trained together as one batched model"""
    torch_deterministic: bool = True
    """if toggled, sets torch.backends.cudnn.deterministic=True"""
    log_every: int = 1_000
    """SAC steps between progress lines and TensorBoard scalars"""
    random_episodes: int = 10
    """episodes of a uniform-random policy per task, recorded in metadata.json as the reference minimum return"""

    # Algorithm specific arguments (SAC)
    learning_starts: Optional[int] = None
    """uniform-random actions before this step, updates after it (if unset: 2_000 for point-robot, 5_000 otherwise)"""
    hidden_dim: Optional[int] = None
    """width of the two hidden layers of actor and critics (if unset: 64 for point-robot, 256 otherwise)"""
    batch_size: int = 256
    """transitions per task in each SAC update"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target smoothing coefficient"""
    policy_lr: float = 3e-4
    """learning rate of the actor and of the entropy temperature"""
    q_lr: float = 1e-3
    """learning rate of the critics"""
    policy_frequency: int = 2
    """delayed actor updates: every policy_frequency steps, policy_frequency actor updates (CleanRL)"""
    checkpoint_every: Optional[int] = None
    """SAC steps between saved actor checkpoints (if unset: sac_steps // 20)"""
    resume_every_minutes: float = 20.0
    """minutes between saved states of a SAC run (networks, optimizers, replay buffer, envs), from which an interrupted run continues exactly; 0: never"""


DESCRIPTION = (
    "Train one SAC agent per task and write an offline dataset under data/ (docs/collect_data.md).\n\n"
    "Time of a default collection on a 2-core CPU, one thread, another process beside it (measured SAC steps/s of the "
    "batched model, extrapolated to the default budget): point-robot 7 min; cheetah-dir 4.5 h; cheetah-vel, "
    "hopper-params and walker-params 44-46 h; ant-dir 49 h; humanoid-dir 83 h at its 20-task rate, but its replay "
    "buffers (3.1 GB a task) need --tasks-per-batch 7 in 24 GB (not timed). On a GPU: --device cuda (the default when torch sees one)."
)

LOG_STD_MAX = 2
LOG_STD_MIN = -5


class VectorizedLinear(nn.Module):
    """One linear layer per task, applied to a (tasks, batch, in_features) tensor with one batched matmul."""

    def __init__(self, in_features: int, out_features: int, n_tasks: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_tasks, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_tasks, 1, out_features))
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default initialization, per task
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return torch.baddbmm(self.bias, x, self.weight)


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden_dim, n_tasks):
        super().__init__()
        self.fc1 = VectorizedLinear(obs_dim + act_dim, hidden_dim, n_tasks)
        self.fc2 = VectorizedLinear(hidden_dim, hidden_dim, n_tasks)
        self.fc3 = VectorizedLinear(hidden_dim, 1, n_tasks)

    def forward(self, x, a):
        x = F.relu(self.fc1(torch.cat([x, a], -1)))
        return self.fc3(F.relu(self.fc2(x)))


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden_dim, n_tasks):
        super().__init__()
        self.fc1 = VectorizedLinear(obs_dim, hidden_dim, n_tasks)
        self.fc2 = VectorizedLinear(hidden_dim, hidden_dim, n_tasks)
        self.fc_mean = VectorizedLinear(hidden_dim, act_dim, n_tasks)
        self.fc_logstd = VectorizedLinear(hidden_dim, act_dim, n_tasks)

    def forward(self, x):
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        log_std = torch.tanh(self.fc_logstd(x))
        return self.fc_mean(x), LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)

    def get_action(self, x):
        mean, log_std = self(x)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        action = torch.tanh(x_t)
        log_prob = (normal.log_prob(x_t) - torch.log(1 - action.pow(2) + 1e-6)).sum(-1, keepdim=True)
        return action, log_prob, torch.tanh(mean)


def task_slice(state_dict: dict, i: int) -> dict:
    """The weights of task i (index into the batch) of a vectorized network, as a 1-task state dict."""
    return {k: v[i : i + 1].detach().cpu().clone() for k, v in state_dict.items()}


def stack_tasks(state_dicts: list) -> dict:
    return {k: torch.cat([sd[k] for sd in state_dicts]) for k in state_dicts[0]}


class BatchedSAC:
    """SAC for several tasks at once: every network holds one set of weights per task; each task's loss is its
    own batch mean, and the losses are summed over tasks, so each task gets exactly its own gradient."""

    def __init__(self, obs_dim, act_dim, n_tasks, args: Args, device):
        hidden = args.hidden_dim
        self.args = args
        self.actor = Actor(obs_dim, act_dim, hidden, n_tasks).to(device)
        self.qf1 = SoftQNetwork(obs_dim, act_dim, hidden, n_tasks).to(device)
        self.qf2 = SoftQNetwork(obs_dim, act_dim, hidden, n_tasks).to(device)
        self.qf1_target = SoftQNetwork(obs_dim, act_dim, hidden, n_tasks).to(device)
        self.qf2_target = SoftQNetwork(obs_dim, act_dim, hidden, n_tasks).to(device)
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_optimizer = torch.optim.Adam(list(self.qf1.parameters()) + list(self.qf2.parameters()), lr=args.q_lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr)
        self.target_entropy = -float(act_dim)
        self.log_alpha = torch.zeros(n_tasks, 1, 1, device=device, requires_grad=True)
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=args.policy_lr)
        self.update_count = 0

    def update(self, batch: dict) -> dict:
        args, alpha = self.args, self.log_alpha.exp().detach()
        with torch.no_grad():
            next_actions, next_log_pi, _ = self.actor.get_action(batch["next_observations"])
            min_qf_next = torch.min(
                self.qf1_target(batch["next_observations"], next_actions),
                self.qf2_target(batch["next_observations"], next_actions),
            ) - alpha * next_log_pi
            # Bootstrap through time-limit truncations: only true terminations end the return.
            next_q_value = batch["rewards"] + (1 - batch["terminations"]) * args.gamma * min_qf_next
        qf1_a_values = self.qf1(batch["observations"], batch["actions"])
        qf2_a_values = self.qf2(batch["observations"], batch["actions"])
        qf1_loss = F.mse_loss(qf1_a_values, next_q_value, reduction="none").mean((1, 2)).sum()
        qf2_loss = F.mse_loss(qf2_a_values, next_q_value, reduction="none").mean((1, 2)).sum()
        self.q_optimizer.zero_grad()
        (qf1_loss + qf2_loss).backward()
        self.q_optimizer.step()
        log = {"losses/qf1_loss": qf1_loss, "losses/qf2_loss": qf2_loss, "losses/qf1_values": qf1_a_values.mean()}

        if self.update_count % args.policy_frequency == 0:
            for _ in range(args.policy_frequency):  # compensate for the delay (CleanRL, Denis Yarats)
                pi, log_pi, _ = self.actor.get_action(batch["observations"])
                min_qf_pi = torch.min(self.qf1(batch["observations"], pi), self.qf2(batch["observations"], pi))
                actor_loss = (self.log_alpha.exp().detach() * log_pi - min_qf_pi).mean((1, 2)).sum()
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.actor_optimizer.step()
                with torch.no_grad():
                    _, log_pi, _ = self.actor.get_action(batch["observations"])
                alpha_loss = (-self.log_alpha.exp() * (log_pi + self.target_entropy)).mean((1, 2)).sum()
                self.a_optimizer.zero_grad()
                alpha_loss.backward()
                self.a_optimizer.step()
            log.update({"losses/actor_loss": actor_loss, "losses/alpha": self.log_alpha.exp().mean()})
        with torch.no_grad():
            for net, target in ((self.qf1, self.qf1_target), (self.qf2, self.qf2_target)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.lerp_(p, args.tau)
        self.update_count += 1
        return log

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "qf1": self.qf1.state_dict(),
            "qf2": self.qf2.state_dict(),
            "qf1_target": self.qf1_target.state_dict(),
            "qf2_target": self.qf2_target.state_dict(),
            "log_alpha": self.log_alpha.detach(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "update_count": self.update_count,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "qf1", "qf2", "qf1_target", "qf2_target", "q_optimizer", "actor_optimizer", "a_optimizer"):
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.update_count = state["update_count"]


class ReplayBuffer:
    """Transitions of every task of a batch, stored as (tasks, capacity, dim) tensors on the training device."""

    def __init__(self, n_tasks, capacity, obs_dim, act_dim, device):
        self.device = device
        self.observations = torch.zeros(n_tasks, capacity, obs_dim, device=device)
        self.actions = torch.zeros(n_tasks, capacity, act_dim, device=device)
        self.rewards = torch.zeros(n_tasks, capacity, 1, device=device)
        self.next_observations = torch.zeros(n_tasks, capacity, obs_dim, device=device)
        self.terminations = torch.zeros(n_tasks, capacity, 1, device=device)
        self.size = 0
        self.rows = torch.arange(n_tasks, device=device)[:, None]

    def add(self, obs, actions, rewards, next_obs, terminations):
        i = self.size
        self.observations[:, i] = torch.as_tensor(obs, device=self.device)
        self.actions[:, i] = torch.as_tensor(actions, device=self.device)
        self.rewards[:, i, 0] = torch.as_tensor(rewards, device=self.device)
        self.next_observations[:, i] = torch.as_tensor(next_obs, device=self.device)
        self.terminations[:, i, 0] = torch.as_tensor(terminations, device=self.device)
        self.size += 1

    def sample(self, batch_size):
        index = torch.randint(0, self.size, (len(self.rows), batch_size), device=self.device)
        return {
            "observations": self.observations[self.rows, index],
            "actions": self.actions[self.rows, index],
            "rewards": self.rewards[self.rows, index],
            "next_observations": self.next_observations[self.rows, index],
            "terminations": self.terminations[self.rows, index],
        }


BUFFER_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminations")


class EpisodeRecorder:
    """Per-task transitions in the dataset format, in preallocated arrays (tasks x capacity). With
    store_transitions=False only the flags are kept: the replay behaviour takes (s, a, r, s') from the SAC buffer."""

    def __init__(self, n_tasks, capacity, obs_dim, act_dim, store_transitions=True):
        shapes = {"observations": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_observations": (obs_dim,)}
        self.arrays = {k: np.zeros((n_tasks, capacity, *v), np.float32) for k, v in shapes.items() if store_transitions}
        self.arrays["terminations"] = np.zeros((n_tasks, capacity), np.bool_)
        self.arrays["truncations"] = np.zeros((n_tasks, capacity), np.bool_)
        self.arrays["episode_ids"] = np.zeros((n_tasks, capacity), np.int32)
        self.arrays["policy_steps"] = np.zeros((n_tasks, capacity), np.int64)
        self.size = np.zeros(n_tasks, np.int64)
        self.episode = np.zeros(n_tasks, np.int32)

    def add(self, i, obs, action, reward, next_obs, terminated, truncated, policy_step):
        values = {
            "observations": obs,
            "actions": action,
            "rewards": reward,
            "next_observations": next_obs,
            "terminations": terminated,
            "truncations": truncated,
            "episode_ids": self.episode[i],
            "policy_steps": policy_step,
        }
        for k, array in self.arrays.items():
            array[i, self.size[i]] = values[k]
        self.size[i] += 1
        self.episode[i] += terminated or truncated

    def task_data(self, i, rb=None) -> dict:
        n = self.size[i]
        data = {k: v[i, :n].copy() for k, v in self.arrays.items()}
        if rb is not None:
            for k in ("observations", "actions", "next_observations"):
                data[k] = getattr(rb, k)[i, :n].cpu().numpy()
            data["rewards"] = rb.rewards[i, :n, 0].cpu().numpy()
        if not (data["terminations"][-1] or data["truncations"][-1]):
            data["truncations"][-1] = True  # the buffer ends inside an episode: that episode is cut there
        return data


def env_seed(seed: int, task_id: int, stream: int) -> int:
    """Distinct env seeds per collection seed, task and purpose (0: SAC training, 1: rollouts, 2: random policy)."""
    return ((seed * 1000 + task_id) * 10 + stream) % 2**31


def generator_state() -> dict:
    """The state of every random generator this script draws from: torch's (envs are seeded per task, see env_seed)."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_generator_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sac_dir(args: Args, task_id: int) -> str:
    return os.path.join(args.out_dir, args.env, "sac", f"seed_{args.seed}", f"task_{task_id:02d}")


def sac_config(args: Args, task: dict) -> dict:
    keys = ("sac_steps", "learning_starts", "hidden_dim", "batch_size", "gamma", "tau", "policy_lr", "q_lr")
    config = {k: getattr(args, k) for k in keys + ("policy_frequency", "checkpoint_every", "seed")}
    return {"env": args.env, "task": task, **config}


def checkpoint_steps(args: Args) -> list:
    steps = list(range(args.checkpoint_every, args.sac_steps + 1, args.checkpoint_every))
    return steps if steps and steps[-1] == args.sac_steps else steps + [args.sac_steps]


def trained_sac_matches(args: Args, task_id: int, task: dict) -> bool:
    path = os.path.join(sac_dir(args, task_id), "config.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        saved = json.load(f)
    if saved != json.loads(json.dumps(sac_config(args, task))):
        raise SystemExit(
            f"error: {path} holds SAC checkpoints trained with other settings than this run's.\n"
            f"Use the same SAC arguments, another --out-dir or --seed, or remove {sac_dir(args, task_id)} to retrain."
        )
    return all(os.path.exists(os.path.join(sac_dir(args, task_id), f"actor_step{s}.pt")) for s in checkpoint_steps(args))


def resume_dir(args: Args, task_ids: list) -> str:
    name = "resume_tasks_" + "_".join(f"{i:02d}" for i in task_ids)
    return os.path.join(args.out_dir, args.env, "sac", f"seed_{args.seed}", name)


def save_sac_state(folder: str, step: int, state: dict, rb: ReplayBuffer) -> None:
    """The filled part of the replay buffer as one .npy file per field (numpy writes a strided view without copying it),
    then everything else; state.pt names the step of its buffer files, so a cut between the writes leaves the last
    state whole."""
    for k in BUFFER_FIELDS:
        values = getattr(rb, k)[:, : rb.size].cpu().numpy()
        atomic_write(os.path.join(folder, f"{k}_step{step}.npy"), lambda p: np.save(p, values), suffix=".npy")
    atomic_write(os.path.join(folder, "state.pt"), lambda p: torch.save({**state, "step": step}, p), suffix=".pt")
    for name in os.listdir(folder):
        if name.endswith(".npy") and not name.endswith(f"_step{step}.npy"):
            os.remove(os.path.join(folder, name))


def load_sac_state(folder: str, key: dict, rb: ReplayBuffer, device) -> dict:
    """The saved state of an interrupted SAC run, its replay buffer copied into `rb` one task at a time."""
    retry = f"remove {folder} to train this batch from the start, or use another --out-dir or --seed"
    try:
        state = torch.load(os.path.join(folder, "state.pt"), map_location=device, weights_only=False)  # pickles envs
        if state["key"] != key:
            raise SystemExit(f"error: {folder} holds an interrupted SAC run of other settings than this run's; {retry}")
        for k in BUFFER_FIELDS:
            values = np.load(os.path.join(folder, f"{k}_step{state['step']}.npy"), mmap_mode="r")
            for j in range(values.shape[0]):
                getattr(rb, k)[j, : values.shape[1]] = torch.from_numpy(np.array(values[j]))
    except (OSError, EOFError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise SystemExit(f"error: the saved SAC state in {folder} cannot be read ({e}); {retry}")
    rb.size = state["step"]
    return state


def train_sac(args, task_ids, tasks, device, writer, recorder=None):
    """Train one SAC agent per task in `task_ids` (batched); save actor checkpoints and the final full state."""
    envs = [make_env(args.env, i, args.n_tasks, args.task_seed) for i in task_ids]
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    n = len(task_ids)
    agent = BatchedSAC(obs_dim, act_dim, n, args, device)
    rb = ReplayBuffer(n, args.sac_steps, obs_dim, act_dim, device)
    obs = np.stack([env.reset(seed=env_seed(args.seed, i, 0))[0] for env, i in zip(envs, task_ids)])
    for env, i in zip(envs, task_ids):
        env.action_space.seed(env_seed(args.seed, i, 0))
    saved_steps = set(checkpoint_steps(args))
    running, recent = np.zeros(n), [[] for _ in range(n)]
    label = f"[{args.env} tasks {task_ids[0]}..{task_ids[-1]}]"
    folder, start_step, elapsed = resume_dir(args, task_ids), 0, 0.0
    key = json.loads(json.dumps({**sac_config(args, [tasks[i] for i in task_ids]), "replay": recorder is not None}))
    if os.path.exists(os.path.join(folder, "state.pt")):
        saved = load_sac_state(folder, key, rb, device)
        agent.load_state_dict(saved["agent"])
        envs, obs, running, recent = saved["envs"], saved["obs"], saved["running"], saved["recent"]
        if recorder is not None:
            recorder.__dict__.update(saved["recorder"].__dict__)
        set_generator_state(saved["generator"])
        start_step, elapsed = saved["step"], saved["elapsed"]
        print(f"{label} resuming SAC at step {start_step:,} from {folder}", flush=True)
    start_time = time.time() - elapsed
    last_log, last_save = (start_step, time.time()), time.time()
    for global_step in range(start_step, args.sac_steps):
        if global_step < args.learning_starts:
            actions = np.stack([env.action_space.sample() for env in envs])
        else:
            with torch.no_grad():
                actions, _, _ = agent.actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)[:, None])
            actions = actions[:, 0].cpu().numpy()
        next_obs, rewards, terminations = np.empty_like(obs), np.zeros(n), np.zeros(n, dtype=bool)
        real_next_obs = np.empty_like(obs)
        for j, env in enumerate(envs):
            o, r, terminated, truncated, _ = env.step(actions[j])
            real_next_obs[j], rewards[j], terminations[j] = o, r, terminated
            if recorder is not None:
                recorder.add(j, obs[j], actions[j], r, o, terminated, truncated, global_step)
            running[j] += r
            if terminated or truncated:
                recent[j] = (recent[j] + [running[j]])[-10:]
                writer.add_scalar(f"charts/task_{task_ids[j]:02d}/episodic_return", running[j], global_step)
                running[j] = 0.0
                o, _ = env.reset()
            next_obs[j] = o
        rb.add(obs, actions, rewards, real_next_obs, terminations)
        obs = next_obs
        if global_step >= args.learning_starts:
            log = agent.update(rb.sample(args.batch_size))
        step = global_step + 1
        if step in saved_steps:
            for j, i in enumerate(task_ids):
                actor = task_slice(agent.actor.state_dict(), j)
                actor_path = os.path.join(sac_dir(args, i), f"actor_step{step}.pt")
                atomic_write(actor_path, lambda p: torch.save(actor, p), suffix=".pt")
        if step % args.log_every == 0 or step == args.sac_steps:
            now = time.time()
            sps = (step - last_log[0]) / (now - last_log[1])  # over the last interval, so the ETA follows the update phase
            last_log = (step, now)
            mean_recent = np.mean([np.mean(r) for r in recent if r]) if any(recent) else float("nan")
            eta = datetime.timedelta(seconds=round((args.sac_steps - step) / sps))
            print(
                f"{label} step {step}/{args.sac_steps} | {sps:,.0f} steps/s | "
                f"return (last 10 episodes, mean over tasks) {mean_recent:.2f} | "
                + ("ETA after the random warm-up" if step <= args.learning_starts else f"ETA {eta}"),
                flush=True,
            )
            writer.add_scalar("charts/SPS", sps, step)
            writer.add_scalar("charts/episodic_return", mean_recent, step)
            if global_step >= args.learning_starts:
                for k, v in log.items():
                    writer.add_scalar(k, v.item(), step)
        if 0 < args.resume_every_minutes * 60 <= time.time() - last_save and step < args.sac_steps:
            state = {"key": key, "agent": agent.state_dict(), "envs": envs, "obs": obs, "running": running,
                     "recent": recent, "recorder": recorder, "generator": generator_state(),
                     "elapsed": time.time() - start_time}
            try:
                save_sac_state(folder, step, state, rb)
            except OSError as e:  # e.g. a full disk: the run goes on, only resumability is lost
                print(f"warning: the SAC state could not be saved in {folder} ({e})", file=sys.stderr)
            last_save = time.time()
    # the stream where the rollouts start, so that rollouts resumed with these checkpoints continue it (see __main__)
    after_sac = {"sac_batch": list(task_ids), "behavior": args.behavior, **generator_state()}
    state = agent.state_dict()
    for j, i in enumerate(task_ids):
        atomic_write(os.path.join(sac_dir(args, i), "generator_state.pt"), lambda p: torch.save(after_sac, p), suffix=".pt")
        per_task = {k: task_slice(v, j) for k, v in state.items() if k.startswith(("actor", "qf")) and "optimizer" not in k}
        per_task["log_alpha"] = state["log_alpha"][j : j + 1].cpu()
        atomic_write(os.path.join(sac_dir(args, i), "sac_final.pt"), lambda p: torch.save(per_task, p), suffix=".pt")
        atomic_write_json(os.path.join(sac_dir(args, i), "config.json"), sac_config(args, tasks[i]))
    shutil.rmtree(folder, ignore_errors=True)
    checkpoint_dir = os.path.dirname(sac_dir(args, task_ids[0]))
    print(f"{label} SAC done in {time.time() - start_time:,.0f} s; checkpoints in {checkpoint_dir}")
    return rb


def rollout(args, task_ids, policy_step_counts: list, device, recorder):
    """Roll out stochastic trajectories of saved actors: policy_step_counts is a list of (sac step, episodes per task)."""
    envs = [make_env(args.env, i, args.n_tasks, args.task_seed) for i in task_ids]
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    for env, i in zip(envs, task_ids):
        env.reset(seed=env_seed(args.seed, i, 1))
    for policy_step, episodes in policy_step_counts:
        actor = Actor(obs_dim, act_dim, args.hidden_dim, len(task_ids)).to(device)
        weights = [torch.load(os.path.join(sac_dir(args, i), f"actor_step{policy_step}.pt")) for i in task_ids]
        actor.load_state_dict(stack_tasks(weights))
        obs = np.stack([env.reset()[0] for env in envs])
        remaining = np.full(len(task_ids), episodes)
        while remaining.any():
            with torch.no_grad():
                actions, _, _ = actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)[:, None])
            actions = actions[:, 0].cpu().numpy()
            for j, env in enumerate(envs):
                if remaining[j] == 0:
                    continue
                o, r, terminated, truncated, _ = env.step(actions[j])
                recorder.add(j, obs[j], actions[j], r, o, terminated, truncated, policy_step)
                if terminated or truncated:
                    remaining[j] -= 1
                    o, _ = env.reset()
                obs[j] = o


def random_policy_returns(args, task_id, episodes) -> list:
    env = make_env(args.env, task_id, args.n_tasks, args.task_seed)
    env.action_space.seed(env_seed(args.seed, task_id, 2))
    env.reset(seed=env_seed(args.seed, task_id, 2))
    returns = []
    for _ in range(episodes):
        env.reset()
        total, done = 0.0, False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + r, terminated or truncated
        returns.append(total)
    return returns


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes free for new tensors on `device` (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}


def update_metadata(args, obs_dim, act_dim, new_entries: dict):
    """Merge finished tasks into metadata.json (atomically), refusing to mix datasets of different settings."""
    path = os.path.join(dataset_dir(args.out_dir, args.env, args.behavior), "metadata.json")
    train_ids, test_ids = train_test_split(args.env, num_tasks(args.env, args.n_tasks), args.n_train)
    header = {
        "format_version": FORMAT_VERSION,
        "env": args.env,
        "behavior": args.behavior,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "task_set": {"n_tasks": num_tasks(args.env, args.n_tasks), "task_seed": args.task_seed},
        "train_task_ids": train_ids,
        "test_task_ids": test_ids,
        "collection_seed": args.seed,
        "num_trajectories": None if args.behavior == "replay" else args.num_trajectories,
        "sac": {k: v for k, v in sac_config(args, None).items() if k not in ("env", "task")},
        "sac_checkpoint_steps": checkpoint_steps(args),
        "versions": {
            "gymnasium": gym.__version__,
            "mujoco": mujoco.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }
    if args.behavior == "mixed":
        header["mixed_checkpoint_steps"] = mixed_schedule(args)
    metadata = {**header, "tasks": {}}
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)
        for k in ("format_version", "env", "behavior", "task_set", "collection_seed", "num_trajectories", "sac"):
            if existing.get(k) != json.loads(json.dumps(header[k])):
                raise SystemExit(f"error: {path} was collected with {k}={existing.get(k)}, this run has {header[k]}")
        for package in ("gymnasium", "mujoco"):  # never mix transitions of different simulators in one dataset
            if existing["versions"][package] != header["versions"][package]:
                raise SystemExit(
                    f"error: {path} was collected with {package} {existing['versions'][package]}, this run has "
                    f"{header['versions'][package]}; collect into another --out-dir"
                )
        header["versions"] = existing["versions"]  # the versions the data were made with
        metadata["tasks"] = existing["tasks"]
    metadata["tasks"].update({str(k): v for k, v in new_entries.items()})
    metadata["tasks"] = dict(sorted(metadata["tasks"].items(), key=lambda kv: int(kv[0])))
    atomic_write_json(path, metadata)


def mixed_schedule(args) -> list:
    """(SAC step, episodes per task) of the mixed behaviour: K evenly spaced checkpoints share the trajectories."""
    k = args.num_checkpoints
    steps = [round(args.sac_steps * (j + 1) / k) for j in range(k)]
    saved = set(checkpoint_steps(args))
    if not set(steps) <= saved:
        raise SystemExit(
            f"error: --num-checkpoints {k} needs actor checkpoints at steps {steps}, but they are saved every "
            f"{args.checkpoint_every} steps; choose --num-checkpoints dividing {len(saved)} or set --checkpoint-every."
        )
    counts = [args.num_trajectories // k + (1 if j >= k - args.num_trajectories % k else 0) for j in range(k)]
    return [[s, c] for s, c in zip(steps, counts) if c > 0]


# The valid values of every numeric argument, as intervals; a value outside is refused before anything is written.
ARG_RANGES = {
    "sac_steps": "[1, inf)", "num_trajectories": "[1, inf)", "num_checkpoints": "[1, inf)", "seed": "[0, 4294967295]",
    "n_tasks": "[2, inf)", "task_seed": "[0, 4294967295]", "n_train": "[1, inf)", "tasks_per_batch": "[1, inf)",
    "log_every": "[1, inf)", "random_episodes": "[1, inf)", "learning_starts": "[0, inf)", "hidden_dim": "[1, inf)",
    "batch_size": "[1, inf)", "gamma": "[0, 1]", "tau": "(0, 1]", "policy_lr": "(0, inf)", "q_lr": "(0, inf)",
    "policy_frequency": "[1, inf)", "checkpoint_every": "[1, inf)", "resume_every_minutes": "[0, inf)",
}


def in_interval(value, interval: str) -> bool:
    """Whether a number lies in an interval written like '[1, inf)' or '(0, 1]'."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    return math.isfinite(value) and above and (value <= high if interval[-1] == "]" else value < high)


if __name__ == "__main__":
    args = tyro.cli(Args, description=DESCRIPTION)
    if args.env not in ENV_NAMES:
        print(f"error: --env {args.env}: unknown; valid names are: {', '.join(ENV_NAMES)}", file=sys.stderr)
        raise SystemExit(2)
    for field in fields(Args):
        value, valid = getattr(args, field.name), ARG_RANGES.get(field.name)
        if valid and value is not None and not in_interval(value, valid):
            print(f"error: --{field.name.replace('_', '-')} {value}: must lie in {valid}", file=sys.stderr)
            raise SystemExit(2)
    args.sac_steps = args.sac_steps if args.sac_steps is not None else DEFAULT_SAC_STEPS.get(args.env, 1_000_000)
    if args.learning_starts is None:
        args.learning_starts = DEFAULT_LEARNING_STARTS.get(args.env, 5_000)
    args.hidden_dim = args.hidden_dim if args.hidden_dim is not None else DEFAULT_HIDDEN_DIM.get(args.env, 256)
    if args.num_trajectories is None:
        args.num_trajectories = 100 if args.env in ("point-robot", "cheetah-dir") else 50
    args.checkpoint_every = args.checkpoint_every if args.checkpoint_every is not None else max(args.sac_steps // 20, 1)
    all_tasks = get_tasks(args.env, args.n_tasks, args.task_seed)
    task_ids = list(range(len(all_tasks))) if args.tasks is None else sorted(set(args.tasks))
    bad = [i for i in task_ids if not 0 <= i < len(all_tasks)]
    if bad:
        print(f"error: --tasks {' '.join(map(str, bad))}: out of range for {args.env}; valid ids are 0..{len(all_tasks) - 1}",
              file=sys.stderr)
        raise SystemExit(2)
    if args.behavior == "mixed":
        mixed_schedule(args)
    if args.sac_steps <= args.learning_starts:
        print(f"error: --sac-steps {args.sac_steps}: SAC acts uniformly at random for its first --learning-starts "
              f"{args.learning_starts} steps, so its policy would be untrained; give more steps or fewer warm-up steps",
              file=sys.stderr)
        raise SystemExit(2)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: torch {torch.__version__} sees no CUDA device; use --device cpu",
              file=sys.stderr)
        raise SystemExit(2)

    out = dataset_dir(args.out_dir, args.env, args.behavior)
    meta_path = os.path.join(out, "metadata.json")
    done = {}
    if os.path.exists(meta_path):
        try:
            with open(meta_path) as f:
                done = json.load(f)["tasks"]
        except (json.JSONDecodeError, KeyError) as e:
            raise SystemExit(f"error: {meta_path} is corrupt ({e}); move the folder {out} away and run this command again")
    todo = []
    for i in task_ids:
        if str(i) in done and os.path.exists(task_file(args.out_dir, args.env, args.behavior, i)):
            print(f"task {i}: already complete in {out}, skipped")
        else:
            todo.append(i)
    # The data of a batch depend on the random stream left by the batches before it. An interrupted collection restores
    # the stream where its last finished batch left it, so that it writes what an uninterrupted one would have written.
    finished = sorted(int(k) for k in done if os.path.exists(task_file(args.out_dir, args.env, args.behavior, int(k))))
    stream_path = os.path.join(out, "generator_state.pt")
    if finished and todo:
        saved_stream = torch.load(stream_path) if os.path.exists(stream_path) else None
        if saved_stream is not None and saved_stream["tasks_done"] == finished:
            set_generator_state(saved_stream)
            print(f"continuing the random stream of the collection that wrote tasks {finished}")
        else:
            print(f"note: {stream_path} does not match the finished tasks {finished}; the new tasks' data will differ "
                  "from those of an uninterrupted collection (they are still valid data)")
    probe = make_env(args.env, 0, args.n_tasks, args.task_seed)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    batches = [todo[b : b + args.tasks_per_batch] for b in range(0, len(todo), args.tasks_per_batch)]
    to_train = max([sum(args.behavior == "replay" or not trained_sac_matches(args, i, all_tasks[i]) for i in batch)
                    for batch in batches] + [0])
    per_task = args.sac_steps * (2 * obs_dim + act_dim + 2) * 4  # SAC's replay buffer, float32, on the training device
    free = available_memory(device)
    if free is not None and to_train * per_task > 0.9 * free:
        fits = int(0.9 * free // per_task)
        advice = (f"pass --tasks-per-batch {fits}" if fits else "even one task does not fit: lower --sac-steps or use a "
                  "machine with more memory")
        print(f"error: SAC's replay buffers for {to_train} tasks x {args.sac_steps:,} steps of {args.env} need "
              f"{to_train * per_task / 1e9:.1f} GB ({per_task / 1e9:.2f} GB a task), and {device} has "
              f"{free / 1e9:.1f} GB available; {advice}", file=sys.stderr)
        raise SystemExit(2)
    run_name = f"{args.env}__collect_data_{args.behavior}__{args.seed}__{int(time.time())}"
    writer = SummaryWriter(os.path.join(args.out_dir, "runs", run_name)) if todo else None
    if writer:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    update_metadata(args, obs_dim, act_dim, {})  # refuses, before any work, to add to a dataset of other settings
    total_start = time.time()
    for batch in batches:
        batch_start = time.time()
        trained = [i for i in batch if trained_sac_matches(args, i, all_tasks[i])]  # stops on other SAC settings
        rb = None
        if args.behavior == "replay":  # the buffer is the dataset: SAC is trained again, to the same settings
            recorder = EpisodeRecorder(len(batch), args.sac_steps, obs_dim, act_dim, store_transitions=False)
            rb = train_sac(args, batch, all_tasks, device, writer, recorder)
        else:
            if trained:
                print(f"tasks {trained}: reusing the SAC checkpoints in {os.path.dirname(sac_dir(args, trained[0]))}")
            if trained == batch:  # rollouts of this collection cut after its SAC training: restart them where they began
                streams = [os.path.join(sac_dir(args, i), "generator_state.pt") for i in batch]
                after_sac = [torch.load(p) if os.path.exists(p) else None for p in streams]
                if all(a is not None and a["sac_batch"] == batch and a["behavior"] == args.behavior for a in after_sac):
                    set_generator_state(after_sac[0])
            if len(trained) < len(batch):
                train_sac(args, [i for i in batch if i not in trained], all_tasks, device, writer)
            schedule = [[args.sac_steps, args.num_trajectories]] if args.behavior == "expert" else mixed_schedule(args)
            capacity = args.num_trajectories * HORIZONS[args.env]
            recorder = EpisodeRecorder(len(batch), capacity, obs_dim, act_dim)
            rollout(args, batch, schedule, device, recorder)
        entries = {}
        for j, i in enumerate(batch):
            data = recorder.task_data(j, rb)
            save_task_data(task_file(args.out_dir, args.env, args.behavior, i), data)
            returns = episode_returns(data)
            random_returns = random_policy_returns(args, i, args.random_episodes)
            entries[i] = {
                "params": all_tasks[i],
                "num_transitions": int(len(data["rewards"])),
                "num_episodes": int(len(returns)),
                "return": stats(returns),
                "random_policy_return": stats(random_returns),
                "sac_batch": batch,
            }
            print(
                f"task {i}: {len(returns)} episodes, {len(data['rewards'])} transitions, return {returns.mean():.2f} "
                f"± {returns.std():.2f} (uniform-random policy {np.mean(random_returns):.2f})"
            )
        finished = sorted(finished + batch)
        stream = {"tasks_done": finished, **generator_state()}
        atomic_write(stream_path, lambda p: torch.save(stream, p), suffix=".pt")
        update_metadata(args, obs_dim, act_dim, entries)
        print(f"tasks {batch}: written to {out} in {time.time() - batch_start:,.0f} s")
    skipped = len(task_ids) - len(todo)
    print(f"done: {skipped} tasks skipped, {len(todo)} collected in {time.time() - total_start:,.0f} s; {out}")
    if writer:
        writer.close()
