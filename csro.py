# CSRO (Gao et al., "Context Shift Reduction for Offline Meta-Reinforcement Learning", NeurIPS 2023), on GENTLE's
# TD3+BC backbone as the Meta-NF paper re-implements it, with CSRO's non-prior online context collection.
# Reference code: https://github.com/MoreanP/CSRO (representation, protocol), https://github.com/LAMDA-RL/GENTLE (TD3+BC).
# Docs and deviations from the reference code: docs/csro.md
import datetime
import importlib.util
import math
import os
import platform
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

from common.datasets import DatasetError, TaskBatchSampler, atomic_write, atomic_write_json, load_dataset, normalization_stats
from common.envs import ENV_NAMES, HORIZONS, make_env, train_test_split

ALGORITHM = "csro"
# With --checkpoint every argument comes from the saved run but these, which change neither the networks nor the random
# stream of training (--total-steps trains a run further); with --eval-only also EVALUATION_OPTIONS.
RESUME_OPTIONS = ("checkpoint", "eval_only", "exp_name", "total_steps", "eval_every", "log_every", "device", "save_model",
                  "data_dir", "checkpoint_every", "capture_video")
EVALUATION_OPTIONS = ("eval_episodes", "few_shot_context", "non_prior_steps", "non_prior_random_fraction",
                      "non_prior_infer_after")
# The valid values of every numeric argument, as intervals; check_args refuses any other before anything is written.
ARG_RANGES = {
    "seed": "[0, 4294967295]", "total_steps": "[1, inf)", "eval_every": "[1, inf)", "eval_episodes": "[1, inf)",
    "log_every": "[1, inf)", "checkpoint_every": "[1, inf)", "n_tasks": "[2, inf)", "task_seed": "[0, 4294967295]",
    "n_train": "[1, inf)", "meta_batch_size": "[1, inf)", "batch_size": "[1, inf)", "context_size": "[1, inf)",
    "few_shot_context": "[1, inf)", "latent_dim": "[1, inf)", "hidden_dim": "[1, inf)", "encoder_hidden_dim": "[1, inf)",
    "lr": "(0, inf)", "gamma": "[0, 1]", "tau": "(0, 1]", "reward_scale": "(0, inf)", "alpha": "[0, inf)",
    "policy_noise": "[0, inf)", "noise_clip": "[0, inf)", "policy_frequency": "[1, inf)",
    "focal_weight": "[0, inf)", "club_weight": "[0, inf)", "club_model_weight": "[0, inf)", "non_prior_steps": "[1, inf)",
    "non_prior_random_fraction": "[0, 1]", "non_prior_infer_after": "[1, inf)",
}
VIDEO_TASKS = 2  # --capture-video on a MuJoCo family: the first train and test tasks recorded


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    env: str = "point-robot"
    """task family, one of: point-robot, cheetah-vel, cheetah-dir, ant-dir, humanoid-dir, hopper-params, walker-params"""
    seed: int = 0
    """seed of the experiment (networks, sampling, evaluation episodes)"""
    data_dir: str = "data"
    """root folder of the datasets made by collect_data.py"""
    behavior: Literal["expert", "mixed", "replay"] = "expert"
    """which dataset of the env to train on"""
    total_steps: int = 200_000
    """gradient steps"""
    eval_every: int = 10_000
    """gradient steps between evaluations (the last step is always evaluated)"""
    eval_episodes: int = 3
    """episodes per task and protocol at each evaluation (non-prior: runs of the whole protocol); a task's score is their
    mean"""
    log_every: int = 1_000
    """gradient steps between loss logs (the only host synchronizations of the training loop)"""
    device: str = "auto"
    """torch device; auto: cuda when available"""
    save_model: bool = True
    """save checkpoint.pt at each evaluation, every --checkpoint-every steps and when stopped (Ctrl-C, SIGTERM)"""
    checkpoint_every: int = 5_000
    """gradient steps between checkpoints besides those of the evaluations"""
    capture_video: bool = False
    """at the final evaluation, record zero-shot episodes under {run_dir}/videos/ (MuJoCo MP4s: see README.md)"""
    checkpoint: Optional[str] = None
    """a checkpoint.pt to resume training from, or to evaluate with --eval-only"""
    eval_only: bool = False
    """evaluate --checkpoint with every protocol and exit"""
    torch_deterministic: bool = True
    """if toggled, sets torch.backends.cudnn.deterministic=True"""
    n_tasks: int = 20
    """number of tasks in the task set (cheetah-dir: always 2)"""
    task_seed: int = 1337
    """seed of the task set"""
    n_train: int = 10
    """the first n_train tasks are the training tasks, the rest the test tasks"""

    # Algorithm specific arguments
    meta_batch_size: Optional[int] = None
    """training tasks per gradient step, drawn without replacement as CSRO does (if unset: every training task)"""
    batch_size: int = 256
    """RL transitions per task of the meta-batch"""
    context_size: int = 64
    """transitions in a training context, drawn at random from the task's data (FOCAL's per-family value)"""
    few_shot_context: int = 20
    """few-shot protocol: offline transitions appended to the context before each episode (the horizon)"""
    latent_dim: int = 5
    """size of the task representation z (5; 10 for hopper-params and walker-params)"""
    hidden_dim: int = 64
    """width of the 3 hidden layers of actor and critics (256; 64 for point-robot)"""
    encoder_hidden_dim: int = 64
    """width of the 3 hidden layers of the encoder and of the CLUB network (200; 64 for point-robot)"""
    focal_weight: float = 10.0
    """weight of the distance-metric loss"""
    club_weight: float = 25.0
    """weight of the CLUB upper bound in the encoder loss (CSRO's per-family value)"""
    club_model_weight: float = 10.0
    """weight of the CLUB network's own loss (its Gaussian NLL of the detached codes)"""
    lr: float = 3e-4
    """learning rate of actor, critics, encoder and CLUB network"""
    gamma: float = 0.9
    """discount factor (0.99; 0.9 for point-robot)"""
    tau: float = 0.005
    """target smoothing coefficient"""
    reward_scale: float = 5.0
    """rewards are multiplied by this in the critic target (GENTLE's 5)"""
    alpha: float = 2.5
    """TD3+BC: lambda = alpha / mean|min(Q1, Q2)|"""
    policy_noise: float = 0.2
    """std of the target policy smoothing noise"""
    noise_clip: float = 0.5
    """range of the target policy smoothing noise"""
    policy_frequency: int = 2
    """actor and target networks are updated every policy_frequency critic updates"""
    non_prior_steps: int = 400
    """non-prior protocol: scored env steps per task and run (CSRO's 400 for point-robot, 600 otherwise)"""
    non_prior_random_fraction: float = 0.5
    """non-prior protocol: exploration acts uniformly at random while scored plus exploration-episode steps are below
    this fraction of --non-prior-steps, then with the stochastic policy"""
    non_prior_infer_after: int = 1
    """non-prior protocol: z is first inferred after this many episodes' worth of scored steps (CSRO's 1 for
    point-robot, 2 otherwise)"""


def env_defaults(env: str) -> dict:
    """The defaults that depend on the task family (`--env X --help` shows X's; Args() holds point-robot's). In code:
    resolve_unset(Args(env=X, **env_defaults(X), **overrides))."""
    point, params = env == "point-robot", env in ("hopper-params", "walker-params")
    context = {"point-robot": 64, "cheetah-vel": 100, "hopper-params": 100, "walker-params": 100}  # FOCAL's configs
    # CSRO's configs; ant-dir as its ant-goal and cheetah-dir as its cheetah-vel, which CSRO has no config for
    club_weight = {"cheetah-vel": 10.0, "cheetah-dir": 10.0, "ant-dir": 50.0, "humanoid-dir": 50.0}.get(env, 25.0)
    return dict(context_size=context.get(env, 256), few_shot_context=HORIZONS[env], latent_dim=10 if params else 5,
                hidden_dim=64 if point else 256, gamma=0.9 if point else 0.99, encoder_hidden_dim=64 if point else 200,
                club_weight=club_weight, non_prior_steps=400 if point else 600,
                non_prior_infer_after=1 if point else 2)


def resolve_unset(args: Args) -> Args:
    """The defaults that depend on other arguments."""
    n_train_tasks = 2 if args.env == "cheetah-dir" else args.n_train
    return replace(args, meta_batch_size=args.meta_batch_size or n_train_tasks)


def mlp(in_dim, out_dim, hidden_dim, n_hidden):
    layers, dim = [], in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU()]
        dim = hidden_dim
    return nn.Sequential(*layers, nn.Linear(dim, out_dim))


LOG_STD_MAX = 0  # GENTLE's TD3+BC actor clamps its log-std to [-20, 0]
LOG_STD_MIN = -20


class GaussianActor(nn.Module):
    """tanh-Gaussian policy on [s, z]; TD3+BC trains its reparameterized sample and acts with tanh(mean)."""

    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim):
        super().__init__()
        self.net = mlp(obs_dim + latent_dim, 2 * act_dim, hidden_dim, 3)

    def forward(self, obs, z):
        mean, log_std = self.net(torch.cat([obs, z], -1)).chunk(2, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs, z):
        mean, log_std = self(obs, z)
        return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))

    def act(self, obs, z):
        return torch.tanh(self(obs, z)[0])


class QNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim):
        super().__init__()
        self.net = mlp(obs_dim + act_dim + latent_dim, 1, hidden_dim, 3)

    def forward(self, obs, actions, z):
        return self.net(torch.cat([obs, actions, z], -1))


def transition_inputs(context: dict) -> torch.Tensor:
    return torch.cat([context["observations"], context["actions"], context["rewards"], context["next_observations"]], -1)


def masked_mean(codes, mask):
    """Mean over the context dimension (-2) of the entries where mask is 1; zeros for an empty context."""
    return (codes * mask).sum(-2) / mask.sum(-2).clamp(min=1)


class Encoder(nn.Module):
    """Per-transition code tanh(f(s, a, r, s')); a context's z is the mean of its codes."""

    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim):
        super().__init__()
        self.net = mlp(2 * obs_dim + act_dim + 1, latent_dim, hidden_dim, 3)

    def forward(self, transitions):
        return torch.tanh(self.net(transitions))


class ClubNetwork(nn.Module):
    """CSRO's variational net q_psi(z | s, a) for the CLUB bound: tanh on the whole output, whose first half is the mean
    and whose softplus of the second half the variance (so the variance lies in [softplus(-1), softplus(1)])."""

    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 2 * latent_dim, hidden_dim, 3)

    def forward(self, obs, actions):
        mean, raw_var = torch.tanh(self.net(torch.cat([obs, actions], -1))).chunk(2, -1)
        return mean, F.softplus(raw_var)


def club_model_loss(codes, mean, var):
    """q_psi's own loss, CSRO's Gaussian NLL without constants: mean of (z - mu)^2 / (2 var) + log sqrt(var)."""
    return ((codes - mean) ** 2 / (2 * var) + 0.5 * torch.log(var)).mean()


def club_upper_bound(codes, mean, var):
    """CSRO's CLUB estimate of I(z; (s, a)) over each task's context (tasks, B, D): matched pairs minus all B x B pairs
    (i, j) of the same task, each -(z_j - mu_i)^2 / var_i averaged over pairs and dimensions. The B x B mean is expanded
    into per-task sums, so it costs O(B) instead of O(B^2)."""
    weight = 1.0 / var
    positive = -((codes - mean) ** 2 * weight).mean()
    b = codes.shape[-2]
    pair_sum = (weight.sum(-2) * (codes**2).sum(-2) - 2 * (weight * mean).sum(-2) * codes.sum(-2)
                + b * (weight * mean**2).sum(-2))
    negative = -pair_sum.mean() / b**2
    return positive - negative


def focal_distance_loss(z, task_idx):
    """FOCAL's distance-metric loss as its code computes it, over the pairs k < l of a meta-batch's z (M, D):
    same task: sqrt(d + 1e-3); different tasks: 1 / (d + 0.1), with d the mean squared difference per dimension;
    each sum divided by its number of pairs (+1e-3)."""
    d = ((z[:, None] - z[None]) ** 2).mean(-1)
    upper = torch.ones_like(d, dtype=torch.bool).triu(diagonal=1)
    same = task_idx[:, None] == task_idx[None]
    positive, negative = (upper & same).float(), (upper & ~same).float()
    positive_loss = (torch.sqrt(d + 1e-3) * positive).sum() / (positive.sum() + 1e-3)
    negative_loss = (1.0 / (d + 0.1) * negative).sum() / (negative.sum() + 1e-3)
    return positive_loss + negative_loss


class CSRO:
    def __init__(self, obs_dim, act_dim, args: Args, device):
        self.args = args
        latent, hidden = args.latent_dim, args.hidden_dim
        self.encoder = Encoder(obs_dim, act_dim, latent, args.encoder_hidden_dim).to(device)
        self.club_net = ClubNetwork(obs_dim, act_dim, latent, args.encoder_hidden_dim).to(device)
        self.actor = GaussianActor(obs_dim, act_dim, latent, hidden).to(device)
        self.actor_target = GaussianActor(obs_dim, act_dim, latent, hidden).to(device)
        self.qf1 = QNetwork(obs_dim, act_dim, latent, hidden).to(device)
        self.qf2 = QNetwork(obs_dim, act_dim, latent, hidden).to(device)
        self.qf1_target = QNetwork(obs_dim, act_dim, latent, hidden).to(device)
        self.qf2_target = QNetwork(obs_dim, act_dim, latent, hidden).to(device)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.encoder_optimizer = torch.optim.Adam(self.encoder.parameters(), lr=args.lr)
        self.club_optimizer = torch.optim.Adam(self.club_net.parameters(), lr=args.lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.lr)
        self.q_optimizer = torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=args.lr)
        self.total_it = 0
        self.actor_log = {}  # the latest actor-step losses, logged on every step

    def representation_loss(self, context, mask, task_idx) -> tuple:
        """CSRO's max-min mutual information: FOCAL's loss on the mean codes (max) plus the CLUB upper bound of the
        codes' information on (s, a) (min). As CSRO's code does, q_psi first takes its own step on the detached codes,
        then the bound uses the updated q_psi, detached. The contexts are i.i.d. transitions, so mask is all ones."""
        codes = self.encoder(transition_inputs(context))
        z = masked_mean(codes, mask)
        obs, actions = context["observations"], context["actions"]
        club_net_loss = club_model_loss(codes.detach(), *self.club_net(obs, actions))
        self.club_optimizer.zero_grad()
        (self.args.club_model_weight * club_net_loss).backward()
        self.club_optimizer.step()
        with torch.no_grad():
            mean, var = self.club_net(obs, actions)
        club_loss = club_upper_bound(codes, mean, var)
        focal_loss = focal_distance_loss(z, task_idx)
        loss = self.args.focal_weight * focal_loss + self.args.club_weight * club_loss
        log = {"losses/focal_loss": focal_loss, "losses/club_loss": club_loss, "losses/club_model_loss": club_net_loss}
        return loss, z, log

    def update(self, batch: dict, context: dict, mask: torch.Tensor, task_idx: torch.Tensor) -> dict:
        args = self.args
        representation_loss, z, log = self.representation_loss(context, mask, task_idx)
        self.encoder_optimizer.zero_grad()
        representation_loss.backward()
        self.encoder_optimizer.step()
        log["losses/representation_loss"] = representation_loss

        # z is detached for every RL loss: the encoder learns only from its representation loss.
        z = z.detach()[:, None].expand(-1, batch["observations"].shape[1], -1)
        obs, actions, next_obs = batch["observations"], batch["actions"], batch["next_observations"]
        with torch.no_grad():
            noise = (torch.randn_like(actions) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
            next_actions = (self.actor_target.act(next_obs, z) + noise).clamp(-1.0, 1.0)
            min_qf_next = torch.min(self.qf1_target(next_obs, next_actions, z), self.qf2_target(next_obs, next_actions, z))
            next_q_value = args.reward_scale * batch["rewards"] + (1 - batch["terminations"]) * args.gamma * min_qf_next
        qf1_a_values, qf2_a_values = self.qf1(obs, actions, z), self.qf2(obs, actions, z)
        qf1_loss, qf2_loss = F.mse_loss(qf1_a_values, next_q_value), F.mse_loss(qf2_a_values, next_q_value)
        self.q_optimizer.zero_grad()
        (qf1_loss + qf2_loss).backward()
        self.q_optimizer.step()
        log.update({"losses/qf1_loss": qf1_loss, "losses/qf2_loss": qf2_loss, "losses/qf1_values": qf1_a_values.mean()})

        if self.total_it % args.policy_frequency == 0:
            pi = self.actor.sample(obs, z)
            min_qf_pi = torch.min(self.qf1(obs, pi, z), self.qf2(obs, pi, z))
            lmbda = args.alpha / min_qf_pi.abs().mean().detach()
            bc_loss = F.mse_loss(pi, actions)
            actor_loss = -lmbda * min_qf_pi.mean() + bc_loss
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()
            with torch.no_grad():
                for net, target in ((self.actor, self.actor_target), (self.qf1, self.qf1_target), (self.qf2, self.qf2_target)):
                    for p, tp in zip(net.parameters(), target.parameters()):
                        tp.lerp_(p, args.tau)
            self.actor_log = {"losses/actor_loss": actor_loss.detach(), "losses/bc_loss": bc_loss.detach()}
        self.total_it += 1
        return {**{k: v.detach() for k, v in log.items()}, **self.actor_log}

    @torch.no_grad()
    def context_codes(self, transitions):
        return self.encoder(transitions)

    NETWORKS = ("encoder", "club_net", "actor", "actor_target", "qf1", "qf2", "qf1_target", "qf2_target")
    OPTIMIZERS = ("encoder_optimizer", "club_optimizer", "actor_optimizer", "q_optimizer")

    def state_dict(self) -> dict:
        state = {k: getattr(self, k).state_dict() for k in self.NETWORKS + self.OPTIMIZERS}
        return {**state, "total_it": self.total_it}

    def load_state_dict(self, state: dict):
        for k in self.NETWORKS + self.OPTIMIZERS:
            getattr(self, k).load_state_dict(state[k])
        self.total_it = state["total_it"]


@torch.no_grad()
def evaluate(agent, envs, sampler, protocol, args, obs_mean, obs_std, device, on_step=None) -> np.ndarray:
    """Mean return per task over args.eval_episodes deterministic episodes, all tasks stepped in lockstep.

    zero_shot: the context starts empty (z = 0) and every transition of the episode joins it as it happens;
    few_shot: before each episode, args.few_shot_context offline transitions of the task join the context,
    and z stays fixed during the episode. Episode k resets every env with seed args.seed + k."""
    n, latent = len(envs), args.latent_dim
    mean, std = torch.as_tensor(obs_mean, device=device), torch.as_tensor(obs_std, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    task_idx = torch.arange(n, device=device)
    returns = np.zeros((n, args.eval_episodes))
    code_sum, count = torch.zeros(n, latent, device=device), torch.zeros(n, 1, device=device)
    for episode in range(args.eval_episodes):
        obs = np.stack([env.reset(seed=args.seed + episode)[0] for env in envs])
        if protocol == "zero_shot":
            code_sum.zero_()
            count.zero_()
        else:
            context, _ = sampler.sample_context(task_idx, args.few_shot_context, generator=generator)
            code_sum += agent.context_codes(transition_inputs(context)).sum(1)
            count += args.few_shot_context
        active = np.ones(n, dtype=bool)
        while active.any():
            obs_t = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
            z = code_sum / count.clamp(min=1)
            actions = agent.actor.act(obs_t, z).cpu().numpy()
            next_obs, rewards, stepped = obs.copy(), np.zeros(n, dtype=np.float32), active.copy()
            for j in np.flatnonzero(stepped):
                next_obs[j], rewards[j], terminated, truncated, _ = envs[j].step(actions[j])
                returns[j, episode] += rewards[j]
                active[j] = not (terminated or truncated)
            if on_step:  # --capture-video: each step's observations and acting codes
                on_step(next_obs, z)
            if protocol == "zero_shot":
                transition = {
                    "observations": obs_t,
                    "actions": torch.as_tensor(actions, device=device),
                    "rewards": torch.as_tensor(rewards, device=device)[:, None],
                    "next_observations": (torch.as_tensor(next_obs, dtype=torch.float32, device=device) - mean) / std,
                }
                stepped_t = torch.as_tensor(stepped, dtype=torch.float32, device=device)[:, None]
                code_sum += agent.context_codes(transition_inputs(transition)) * stepped_t
                count += stepped_t
            obs = next_obs
    return returns.mean(1)


def settled_step(codes: np.ndarray) -> int:
    """The first step from which the acting code stays within a tenth of its largest distance to the episode's final
    code: when the inferred task settled."""
    distance = np.linalg.norm(codes - codes[-1], axis=-1)
    above = np.flatnonzero(distance > 0.1 * distance.max()) if distance.max() > 0 else np.array([], dtype=int)
    return int(above[-1] + 1) if len(above) else 0


def capture_video(agent, task_sets, args, obs_mean, obs_std, device, run_dir, writer, step):
    """--capture-video: one zero-shot episode per task, rendered by its env under {run_dir}/videos/: an MP4 of the
    first VIDEO_TASKS train and test tasks of a MuJoCo family; for every point-robot task a picture of its path (also
    in TensorBoard), and in trajectories.json its states and the step at which the acting code settled."""
    video_dir, point = os.path.join(run_dir, "videos"), args.env == "point-robot"
    os.makedirs(video_dir, exist_ok=True)
    one_episode, trajectories = replace(args, eval_episodes=1), {}
    for name, (ids, sampler) in task_sets.items():
        for task_id in ids[: None if point else VIDEO_TASKS]:
            env = make_env(args.env, task_id, args.n_tasks, args.task_seed, render_mode="rgb_array")
            states, codes = [env.reset(seed=args.seed)[0]], []  # evaluate's episode 0 starts here too
            frames = [] if point else [env.render()]

            def on_step(next_obs, z, env=env, frames=frames):
                states.append(next_obs[0].copy())
                codes.append(z[0].cpu().numpy())
                frames.extend([] if point else [env.render()])

            evaluate(agent, [env], sampler, "zero_shot", one_episode, obs_mean, obs_std, device, on_step=on_step)
            path = os.path.join(video_dir, f"{name}_task{task_id:02d}")
            if point:
                from matplotlib.image import imsave

                picture, settled = env.render(), settled_step(np.array(codes))
                trajectories.setdefault(name, {})[str(task_id)] = {
                    "states": np.array(states).tolist(), "goal": env.unwrapped.task["goal"], "settled": settled}
                imsave(path + ".png", picture)
                writer.add_image(f"videos/{name}_task{task_id:02d}", picture, step, dataformats="HWC")
            else:
                import imageio

                imageio.mimwrite(path + ".mp4", frames, fps=env.metadata["render_fps"])
            env.close()
    if trajectories:
        atomic_write_json(os.path.join(video_dir, "trajectories.json"), trajectories)


@torch.no_grad()
def evaluate_non_prior(agent, envs, args, obs_mean, obs_std, device) -> np.ndarray:
    """CSRO's non-prior online protocol, per task the return of the last scored episode, averaged over
    args.eval_episodes runs; all tasks stepped in lockstep, each with its own schedule.

    A run alternates an exploration phase (episodes until at least one horizon of steps, all joining the context) and
    one deterministic scored episode (not joining it), until args.non_prior_steps scored steps. An exploration action
    is uniformly random while CSRO's counter (scored steps so far plus steps of the current exploration episode) is
    below args.non_prior_random_fraction * args.non_prior_steps, else a sample of the stochastic policy. z starts at 0
    and is re-inferred from the whole context after each scored episode once args.non_prior_infer_after horizons of
    scored steps are done. Run k resets every env with seed args.seed + k; the random draws come from a generator
    seeded with args.seed."""
    n, horizon, total = len(envs), HORIZONS[args.env], args.non_prior_steps
    act_dim = envs[0].action_space.shape[0]
    mean, std = torch.as_tensor(obs_mean, device=device), torch.as_tensor(obs_std, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    returns = np.zeros((n, args.eval_episodes))
    for run in range(args.eval_episodes):
        code_sum, count = torch.zeros(n, args.latent_dim, device=device), torch.zeros(n, 1, device=device)
        z = torch.zeros(n, args.latent_dim, device=device)
        scored = np.zeros(n, dtype=np.int64)  # scored steps so far
        explored = np.zeros(n, dtype=np.int64)  # steps of the current exploration phase
        counter = np.zeros(n, dtype=np.int64)  # CSRO's: scored steps + steps of the current exploration episode
        episode_length, episode_return = np.zeros(n, dtype=np.int64), np.zeros(n)
        exploring, active = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
        obs = np.stack([env.reset(seed=args.seed + run)[0] for env in envs])
        while active.any():
            obs_t = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
            action_mean, log_std = agent.actor(obs_t, z)
            noise = torch.randn(action_mean.shape, generator=generator, device=device)
            policy_sample = torch.tanh(action_mean + log_std.exp() * noise)
            uniform = torch.rand(n, act_dim, generator=generator, device=device) * 2 - 1
            random_prob = torch.as_tensor(counter < args.non_prior_random_fraction * total, device=device).float()
            at_random = torch.rand(n, generator=generator, device=device) < random_prob
            exploration = torch.where(at_random[:, None], uniform, policy_sample)
            explore_t = torch.as_tensor(exploring, device=device)[:, None]
            actions = torch.where(explore_t, exploration, torch.tanh(action_mean)).cpu().numpy()
            next_obs, rewards, stepped, ended = obs.copy(), np.zeros(n, dtype=np.float32), active.copy(), np.zeros(n, bool)
            for j in np.flatnonzero(stepped):
                next_obs[j], rewards[j], terminated, truncated, _ = envs[j].step(actions[j])
                ended[j] = terminated or truncated
            transition = {
                "observations": obs_t,
                "actions": torch.as_tensor(actions, device=device),
                "rewards": torch.as_tensor(rewards, device=device)[:, None],
                "next_observations": (torch.as_tensor(next_obs, dtype=torch.float32, device=device) - mean) / std,
            }
            joins = torch.as_tensor(stepped & exploring, dtype=torch.float32, device=device)[:, None]
            code_sum += agent.context_codes(transition_inputs(transition)) * joins
            count += joins
            counter += stepped & exploring
            explored += stepped & exploring
            episode_length += stepped
            episode_return += np.where(stepped & ~exploring, rewards, 0.0)
            obs = next_obs
            for j in np.flatnonzero(ended):
                if exploring[j]:
                    exploring[j] = explored[j] < horizon  # else the phase ends; a new episode restarts the counter
                else:
                    scored[j] += episode_length[j]
                    returns[j, run] = episode_return[j]
                    if scored[j] >= args.non_prior_infer_after * horizon:
                        z[j] = code_sum[j] / count[j]
                    active[j] = scored[j] < total
                    exploring[j], explored[j] = True, 0
                counter[j], episode_length[j], episode_return[j] = scored[j], 0, 0.0
                if active[j]:
                    obs[j] = envs[j].reset()[0]
    return returns.mean(1)


def machine_description(device: torch.device) -> str:
    """Where the run's wall time was measured (results.json): the processor or GPU, the CPU count and the platform."""
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    if device.type != "cuda" and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            processor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), processor)
    return f"{processor}, {os.cpu_count()} CPU cores, {platform.platform()}"


def fail(message: str):
    """A bad argument: one line that names it, and exit code 2 (argparse's and tyro's convention)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def in_interval(value, interval: str) -> bool:
    """Whether a number lies in an interval written like '[1, inf)' or '(0, 1]'."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    return math.isfinite(value) and above and (value <= high if interval[-1] == "]" else value < high)


def check_args(args: Args):
    """Refuse, before anything is written, what cannot run."""
    if args.env not in ENV_NAMES:
        fail(f"--env {args.env}: unknown; valid names are: {', '.join(ENV_NAMES)}")
    if args.eval_only and args.checkpoint is None:
        fail("--eval-only needs --checkpoint PATH")
    if args.capture_video and args.env != "point-robot":
        if not os.environ.get("MUJOCO_GL") and not os.environ.get("DISPLAY"):
            fail("--capture-video: this machine has no display; render offscreen with MUJOCO_GL=egl (libEGL, e.g. apt-get "
                 "install libegl1) or MUJOCO_GL=osmesa (apt-get install libosmesa6) before the command")
        if importlib.util.find_spec("imageio_ffmpeg") is None:
            fail("--capture-video: writing MP4 needs imageio-ffmpeg; install it with: python -m pip install imageio-ffmpeg")
    for field in fields(Args):
        value, valid = getattr(args, field.name), ARG_RANGES.get(field.name)
        if valid and value is not None and not in_interval(value, valid):
            fail(f"--{field.name.replace('_', '-')} {value}: must lie in {valid}")
    try:
        train_test_split(args.env, args.n_tasks, args.n_train)
    except ValueError as e:
        fail(f"--n-train {args.n_train}: {e}")
    try:
        device = torch.device("cpu" if args.device == "auto" else args.device)
    except RuntimeError:
        fail(f"--device {args.device}: not a torch device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu or auto")


def parse_args(argv: list) -> tuple:
    """(Args, the checkpoint or None): the command line over the defaults of the family --env names; with --checkpoint,
    over the saved run's arguments, of which only RESUME_OPTIONS (with --eval-only also EVALUATION_OPTIONS) may change."""
    tokens = [t for token in argv for t in (token.split("=", 1) if token.startswith("--env=") else [token])]
    env = next((value for flag, value in zip(tokens, tokens[1:]) if flag == "--env"), Args.env)
    args = tyro.cli(Args, args=argv, default=Args(env=env, **(env_defaults(env) if env in ENV_NAMES else {})))
    check_args(args)
    if args.checkpoint is None:
        return resolve_unset(args), None
    path = args.checkpoint
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # missing, truncated or not a torch file
        fail(f"--checkpoint {path}: not a readable checkpoint ({type(e).__name__}: {e})")
    found = checkpoint.get("algorithm") if isinstance(checkpoint, dict) else None
    if found != ALGORITHM:
        fail(f"--checkpoint {path}: is a checkpoint of {found!r}, not of {ALGORITHM}; use its own script")
    saved = checkpoint["args"]
    if saved["env"] != args.env:
        fail(f"--checkpoint {path}: was trained on {saved['env']}, not {args.env}; pass --env {saved['env']}")
    unknown = sorted(set(saved) - {f.name for f in fields(Args)})
    if unknown:
        fail(f"--checkpoint {path}: was saved by another version of {ALGORITHM}.py, with options this one has no more "
             f"({', '.join('--' + k.replace('_', '-') for k in unknown)}); use the version that saved it")
    resumed = tyro.cli(Args, args=argv, default=Args(**{**saved, "checkpoint": path, "eval_only": False}))
    changeable = RESUME_OPTIONS + (EVALUATION_OPTIONS if args.eval_only else ())
    for name in sorted(set(saved) - set(changeable)):
        if getattr(resumed, name) != saved[name]:
            allowed = ", ".join("--" + k.replace("_", "-") for k in changeable[2:])
            fail(f"--{name.replace('_', '-')} {getattr(resumed, name)}: the run of {path} has {saved[name]}, and with "
                 f"--checkpoint{' --eval-only' if args.eval_only else ''} only these may change: {allowed}")
    return resolve_unset(resumed), checkpoint


if __name__ == "__main__":
    args, checkpoint = parse_args(sys.argv[1:])
    train_ids, test_ids = train_test_split(args.env, args.n_tasks, args.n_train)
    if not 1 <= args.meta_batch_size <= len(train_ids):
        fail(f"--meta-batch-size {args.meta_batch_size}: the meta-batch's tasks are drawn without replacement, so it "
             f"takes 1 to {len(train_ids)} (the number of training tasks)")
    try:
        task_ids = sorted(set(train_ids + test_ids))
        dataset = load_dataset(args.env, args.behavior, args.data_dir, task_ids, args.n_tasks, args.task_seed)
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
    data_fingerprint = dataset.fingerprint()
    if checkpoint and checkpoint.get("data_fingerprint") != data_fingerprint:
        mismatch = f"--checkpoint {args.checkpoint}: its run trained on other data than {args.data_dir} holds for {args.env}"
        if not args.eval_only:
            fail(f"{mismatch}; resume it with --data-dir set to the data it trained on, or start a new run")
        print(f"warning: {mismatch}; it is evaluated with these", flush=True)
    if checkpoint and not args.eval_only and checkpoint["step"] >= args.total_steps:
        fail(f"--checkpoint {args.checkpoint}: its run has finished its {checkpoint['step']:,} steps; pass a larger "
             f"--total-steps to train it further, or --eval-only to evaluate it")
    interrupted = checkpoint is not None and not args.eval_only and checkpoint["step"] < checkpoint["args"]["total_steps"]
    if interrupted:  # the run goes on in its own folder; a finished run trained further gets a new one
        run_dir = os.path.dirname(os.path.abspath(args.checkpoint))
    else:
        run_name = f"{args.env}__{args.exp_name}{'_eval' if args.eval_only else ''}__{args.seed}__{int(time.time())}"
        run_dir = os.path.join("runs", run_name)
    writer = SummaryWriter(run_dir)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    # a resumed run's args.json stays its own: the same as had it not been interrupted
    atomic_write_json(os.path.join(run_dir, "args.json"), {**asdict(args), **({"checkpoint": None} if interrupted else {})})

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    obs_mean, obs_std = (checkpoint["obs_mean"], checkpoint["obs_std"]) if checkpoint else normalization_stats(dataset, train_ids)
    train_sampler = TaskBatchSampler(dataset, train_ids, obs_mean, obs_std, device)
    test_sampler = TaskBatchSampler(dataset, test_ids, obs_mean, obs_std, device)
    agent = CSRO(dataset.obs_dim, dataset.act_dim, args, device)
    start_step = checkpoint["step"] if checkpoint else 0
    if checkpoint:
        agent.load_state_dict(checkpoint["agent"])
        torch.set_rng_state(checkpoint["rng_state"])
        np.random.set_state(checkpoint["numpy_rng_state"])
        random.setstate(checkpoint["python_rng_state"])
        if device.type == "cuda" and checkpoint["cuda_rng_state"] is not None:
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_state"])
    task_sets = {"train": (train_ids, train_sampler), "test": (test_ids, test_sampler)}
    eval_envs = {name: [make_env(args.env, i, args.n_tasks, args.task_seed) for i in ids] for name, (ids, _) in task_sets.items()}

    def run_evaluation(step: int) -> dict:
        results = {"algorithm": ALGORITHM, "env": args.env, "seed": args.seed, "step": step, "total_steps": args.total_steps,
                   "data_fingerprint": data_fingerprint}
        protocols = ("zero_shot", "few_shot", "non_prior")
        for protocol in protocols:
            results[protocol] = {}
            for name, (ids, sampler) in task_sets.items():
                if protocol == "non_prior":
                    returns = evaluate_non_prior(agent, eval_envs[name], args, obs_mean, obs_std, device)
                else:
                    returns = evaluate(agent, eval_envs[name], sampler, protocol, args, obs_mean, obs_std, device)
                per_task = {str(i): float(r) for i, r in zip(ids, returns)}
                results[protocol][name] = {"mean": float(returns.mean()), "per_task": per_task}
                writer.add_scalar(f"eval/{protocol}/{name}_return", returns.mean(), step)
        print(f"step {step}: " + " | ".join(
            f"{p.replace('_', '-')} train {results[p]['train']['mean']:.2f} test {results[p]['test']['mean']:.2f}"
            for p in protocols), flush=True)
        return results

    if args.eval_only:
        results = run_evaluation(checkpoint["step"])  # total_steps: the budget of the run that saved the checkpoint
        results.update(total_steps=checkpoint["args"]["total_steps"], checkpoint=args.checkpoint)
        atomic_write_json(os.path.join(run_dir, "results.json"), results)
        if args.capture_video:
            capture_video(agent, task_sets, args, obs_mean, obs_std, device, run_dir, writer, checkpoint["step"])
        writer.close()
        raise SystemExit(0)

    n_transitions = sum(len(dataset.tasks[i]["rewards"]) for i in train_ids)
    print(f"{ALGORITHM} on {args.env}: {len(train_ids)} training tasks ({n_transitions:,} transitions of {args.behavior} "
          f"data), {len(test_ids)} test tasks, {args.total_steps - start_step:,} gradient steps on {device}; logs in "
          f"{run_dir}", flush=True)
    start_time, last_log, evaluation_time, evaluations = time.time(), start_step, 0.0, 0
    earlier_wall_time = checkpoint["wall_time"] if checkpoint else 0.0
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    stop_signal = []  # Ctrl-C or SIGTERM: the run saves a checkpoint at the end of its current step and exits

    def request_stop(signum, frame):
        stop_signal.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for global_step in range(start_step, args.total_steps):
        task_idx = torch.randperm(len(train_ids), device=device)[: args.meta_batch_size]
        batch = train_sampler.sample(task_idx, args.batch_size)
        context, mask = train_sampler.sample_context(task_idx, args.context_size)
        log = agent.update(batch, context, mask, task_idx)
        step = global_step + 1
        if step % args.log_every == 0 or step == args.total_steps:
            values = {k: v.item() for k, v in log.items()}
            bad = [k for k, v in values.items() if not np.isfinite(v)]
            if bad:
                raise SystemExit(f"error: {', '.join(bad)} became non-finite between steps {last_log} and {step}; the "
                                 f"run stops here (its last checkpoint, of an earlier step, is kept in {run_dir})")
            for k, v in values.items():
                writer.add_scalar(k, v, step)
            elapsed = time.time() - start_time
            writer.add_scalar("charts/SPS", (step - start_step) / elapsed, step)
            update_rate = (step - start_step) / max(elapsed - evaluation_time, 1e-9)  # evaluations apart
            evaluations_left = -(-args.total_steps // args.eval_every) - (step - 1) // args.eval_every
            seconds_left = (args.total_steps - step) / update_rate + evaluations_left * evaluation_time / max(evaluations, 1)
            print(f"step {step}/{args.total_steps} | {update_rate:,.1f} updates/s | ETA "
                  f"{datetime.timedelta(seconds=round(seconds_left))}{'' if evaluations else ' + evaluations'}", flush=True)
            last_log = step
        evaluated = step % args.eval_every == 0 or step == args.total_steps
        if evaluated:
            evaluation_start = time.time()
            results = run_evaluation(step)
            evaluation_time, evaluations = evaluation_time + time.time() - evaluation_start, evaluations + 1
            results["wall_time"] = earlier_wall_time + time.time() - start_time  # of the whole run, resumed or not
            results["updates_per_second"] = (step - start_step) / (time.time() - start_time)
            results["machine"] = machine_description(device)
        if args.save_model and (evaluated or step % args.checkpoint_every == 0 or stop_signal):
            state = {"algorithm": ALGORITHM, "args": asdict(args), "step": step, "agent": agent.state_dict(),
                     "obs_mean": obs_mean, "obs_std": obs_std, "data_fingerprint": data_fingerprint,
                     "rng_state": torch.get_rng_state(), "numpy_rng_state": np.random.get_state(),
                     "python_rng_state": random.getstate(), "wall_time": earlier_wall_time + time.time() - start_time,
                     "cuda_rng_state": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}
            atomic_write(checkpoint_path, lambda p: torch.save(state, p), suffix=".pt")
        if evaluated:
            atomic_write_json(os.path.join(run_dir, "results.json"), results)
        if args.capture_video and step == args.total_steps:
            capture_video(agent, task_sets, args, obs_mean, obs_std, device, run_dir, writer, step)
        if stop_signal:
            writer.close()
            saved = (f"checkpoint saved; resume with: python {sys.argv[0]} --env {args.env} --checkpoint {checkpoint_path}"
                     if args.save_model else "no checkpoint saved (--no-save-model)")
            print(f"stopped by {signal.Signals(stop_signal[0]).name} at step {step:,}: {saved}", flush=True)
            raise SystemExit(128 + stop_signal[0])
    writer.close()
