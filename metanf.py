# Meta-NF (Liu & Zhang, "Meta-Normalizing Flow for Data-Limited Offline Meta-Reinforcement Learning", AAAI 2026
# student abstract): UNICORN's representation, a conditional normalizing-flow actor trained like TD3+BC, and test-time
# selection of the task representation that best reconstructs the observed context. No public code; the representation
# follows https://github.com/betray12138/UNICORN and the backbone https://github.com/LAMDA-RL/GENTLE.
# Docs and every design choice the paper leaves open: docs/metanf.md
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

ALGORITHM = "metanf"
# With --checkpoint every argument comes from the saved run but these, which change neither the networks nor the random
# stream of training (--total-steps trains a run further); with --eval-only also EVALUATION_OPTIONS.
RESUME_OPTIONS = ("checkpoint", "eval_only", "exp_name", "total_steps", "eval_every", "log_every", "device", "save_model",
                  "data_dir", "checkpoint_every", "capture_video")
EVALUATION_OPTIONS = ("eval_episodes", "few_shot_context", "selection", "act", "act_samples")
# The valid values of every numeric argument, as intervals; check_args refuses any other before anything is written.
ARG_RANGES = {
    "seed": "[0, 4294967295]", "total_steps": "[1, inf)", "eval_every": "[1, inf)", "eval_episodes": "[1, inf)",
    "log_every": "[1, inf)", "checkpoint_every": "[1, inf)", "n_tasks": "[2, inf)", "task_seed": "[0, 4294967295]",
    "n_train": "[1, inf)", "meta_batch_size": "[1, inf)", "batch_size": "[1, inf)", "context_size": "[1, inf)",
    "few_shot_context": "[1, inf)", "latent_dim": "[1, inf)", "hidden_dim": "[1, inf)", "encoder_hidden_dim": "[1, inf)",
    "lr": "(0, inf)", "gamma": "[0, 1]", "tau": "(0, 1]", "reward_scale": "(0, inf)", "alpha": "[0, inf)",
    "policy_noise": "[0, inf)", "noise_clip": "[0, inf)", "policy_frequency": "[1, inf)",
    "beta": "[0, inf)", "flow_blocks": "[1, inf)", "flow_embedding_dim": "[1, inf)", "bc_weight": "[0, inf)",
    "act_samples": "[1, inf)",
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
    """episodes per task and protocol at each evaluation; a task's score is their mean"""
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
    """evaluate --checkpoint with both protocols and exit"""
    torch_deterministic: bool = True
    """if toggled, sets torch.backends.cudnn.deterministic=True"""
    n_tasks: int = 20
    """number of tasks in the task set (cheetah-dir: always 2)"""
    task_seed: int = 1337
    """seed of the task set"""
    n_train: int = 10
    """the first n_train tasks are the training tasks, the rest the test tasks"""

    # Algorithm specific arguments
    meta_batch_size: int = 16
    """training tasks per gradient step, drawn with replacement (so FOCAL's same-task pairs exist)"""
    batch_size: int = 256
    """RL transitions per task of the meta-batch"""
    context_size: int = 20
    """transitions in a training context: the first steps of one offline episode (the horizon, 200; point-robot 20)"""
    few_shot_context: int = 20
    """few-shot protocol: offline transitions appended to the context before each episode (the horizon)"""
    latent_dim: int = 5
    """size of the task representation z (5; 10 for hopper-params and walker-params)"""
    hidden_dim: int = 64
    """width of the 3 hidden layers of actor and critics (256; 64 for point-robot)"""
    encoder_hidden_dim: int = 64
    """width of the 2 hidden layers of encoder and decoder (64; 128 for hopper, walker and humanoid)"""
    beta: float = 1.0
    """weight of the FOCAL distance-metric loss (UNICORN's per-family value; 1.0 for point-robot and humanoid-dir)"""
    flow: bool = True
    """actor: the conditional normalizing flow (--no-flow: the backbone's tanh-Gaussian TD3+BC actor)"""
    selection: bool = True
    """zero-shot z: the code best reconstructing the observed context (--no-selection: mean code), also with --checkpoint"""
    flow_blocks: int = 4
    """flow: number of blocks (LU invertible linear + affine coupling)"""
    flow_embedding_dim: int = 64
    """flow: size of the shared (s, z) embedding that conditions every coupling"""
    bc_weight: float = 1.0
    """weight of the BC term: the negative log-likelihood of the dataset action (flow) or the MSE to it (--no-flow)"""
    act: Optional[Literal["zero", "sample", "best-of-n"]] = None
    """evaluation action: the base latent x = 0; x ~ N(0, I) (seeded); or of x = 0 and --act-samples draws the one with
    the highest min(Q1, Q2) (the Gaussian actor: tanh(mean + std x) likewise) (if unset: sample for the flow; zero for
    --no-flow, TD3+BC's tanh(mean))"""
    act_samples: int = 10
    """--act best-of-n: latent draws besides x = 0"""
    lr: float = 3e-4
    """learning rate of actor, critics, encoder and decoder"""
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


def env_defaults(env: str) -> dict:
    """The defaults that depend on the task family (`--env X --help` shows X's; Args() holds point-robot's). In code:
    resolve_unset(Args(env=X, **env_defaults(X), **overrides))."""
    point, params = env == "point-robot", env in ("hopper-params", "walker-params")
    # UNICORN's configs
    beta = {"cheetah-vel": 0.15, "cheetah-dir": 0.01, "ant-dir": 0.15, "hopper-params": 1.5, "walker-params": 0.7}
    return dict(context_size=HORIZONS[env], few_shot_context=HORIZONS[env], latent_dim=10 if params else 5,
                hidden_dim=64 if point else 256, gamma=0.9 if point else 0.99,
                encoder_hidden_dim=128 if params or env == "humanoid-dir" else 64, beta=beta.get(env, 1.0))


def resolve_unset(args: Args) -> Args:
    """The defaults that depend on other arguments."""
    return replace(args, act=args.act or ("sample" if args.flow else "zero"))


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


class InvertibleLinear(nn.Module):
    """y = W x with W = P L (U + diag(sign * exp(log_scale))): LU-parameterized (Glow), orthogonal at init."""

    def __init__(self, dim):
        super().__init__()
        weight, _ = torch.linalg.qr(torch.randn(dim, dim))
        permutation, lower, upper = torch.linalg.lu(weight)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", torch.sign(diagonal))
        self.register_buffer("strict_lower", torch.tril(torch.ones(dim, dim), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_scale = nn.Parameter(diagonal.abs().log())

    def factors(self):
        eye = torch.eye(len(self.sign), device=self.sign.device)
        lower = self.lower * self.strict_lower + eye
        upper = self.upper * self.strict_lower.T + torch.diag(self.sign * self.log_scale.exp())
        return lower, upper

    def forward(self, x):
        lower, upper = self.factors()
        return x @ (self.permutation @ lower @ upper).T, self.log_scale.sum().expand(x.shape[:-1])

    def inverse(self, y):
        lower, upper = self.factors()
        flat = (y.reshape(-1, y.shape[-1]) @ self.permutation).T  # P^T y, one column per row of y
        flat = torch.linalg.solve_triangular(lower, flat, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, flat, upper=True).T.reshape(y.shape)
        return x, -self.log_scale.sum().expand(y.shape[:-1])


class AffineCoupling(nn.Module):
    """u2 <- u2 exp(log_s) + t with (log_s, t) from [u1, c]; log_s = scale * tanh(.) is bounded (CNF), the last layer is
    zero-initialized so the block starts as the identity. For a 1-D action u1 is empty and (log_s, t) depend on c."""

    def __init__(self, dim, cond_dim, hidden_dim):
        super().__init__()
        self.split = (dim + 1) // 2 if dim > 1 else 0
        self.net = mlp(self.split + cond_dim, 2 * (dim - self.split), hidden_dim, 2)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(dim - self.split))

    def params(self, u1, c):
        raw_log_s, t = self.net(torch.cat([u1, c], -1)).chunk(2, -1)
        return self.scale * torch.tanh(raw_log_s), t

    def forward(self, u, c):
        u1, u2 = u[..., : self.split], u[..., self.split :]
        log_s, t = self.params(u1, c)
        return torch.cat([u1, u2 * log_s.exp() + t], -1), log_s.sum(-1)

    def inverse(self, y, c):
        y1, y2 = y[..., : self.split], y[..., self.split :]
        log_s, t = self.params(y1, c)
        return torch.cat([y1, (y2 - t) * (-log_s).exp()], -1), -log_s.sum(-1)


class FlowActor(nn.Module):
    """a = tanh(f(x; s, z)), x ~ N(0, I): K blocks of invertible linear + affine coupling conditioned on a shared (s, z)
    embedding; log pi(a) = log N(x) + log|det df^-1/du| - sum log(1 - a^2 + 1e-6). act: tanh(f(0; s, z))."""

    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim, n_blocks, embedding_dim):
        super().__init__()
        self.act_dim = act_dim
        self.embedding = mlp(obs_dim + latent_dim, embedding_dim, hidden_dim, 2)
        self.linears = nn.ModuleList(InvertibleLinear(act_dim) for _ in range(n_blocks))
        self.couplings = nn.ModuleList(AffineCoupling(act_dim, embedding_dim, hidden_dim) for _ in range(n_blocks))

    def transform(self, x, c):
        """x -> u = f(x; c) (pre-tanh), with log|det df/dx|."""
        log_det = torch.zeros(x.shape[:-1], device=x.device)
        for linear, coupling in zip(self.linears, self.couplings):
            x, ld_linear = linear(x)
            x, ld_coupling = coupling(x, c)
            log_det = log_det + ld_linear + ld_coupling
        return x, log_det

    def inverse(self, u, c):
        """u -> x = f^-1(u; c), with log|det df^-1/du|."""
        log_det = torch.zeros(u.shape[:-1], device=u.device)
        for linear, coupling in zip(reversed(self.linears), reversed(self.couplings)):
            u, ld_coupling = coupling.inverse(u, c)
            u, ld_linear = linear.inverse(u)
            log_det = log_det + ld_coupling + ld_linear
        return u, log_det

    def sample(self, obs, z):
        c = self.embedding(torch.cat([obs, z], -1))
        return torch.tanh(self.transform(torch.randn(*c.shape[:-1], self.act_dim, device=c.device), c)[0])

    def act(self, obs, z):
        c = self.embedding(torch.cat([obs, z], -1))
        return torch.tanh(self.transform(torch.zeros(*c.shape[:-1], self.act_dim, device=c.device), c)[0])

    def from_latent(self, obs, z, x):
        """tanh(f(x; s, z)) for a given base latent x."""
        return torch.tanh(self.transform(x, self.embedding(torch.cat([obs, z], -1)))[0])

    def log_prob(self, obs, z, actions, clamp=1e-5):
        c = self.embedding(torch.cat([obs, z], -1))
        actions = actions.clamp(-1 + clamp, 1 - clamp)
        x, log_det = self.inverse(torch.atanh(actions), c)
        log_base = -0.5 * (x**2).sum(-1) - 0.5 * self.act_dim * math.log(2 * math.pi)
        return log_base + log_det - torch.log(1 - actions**2 + 1e-6).sum(-1)


class QNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim):
        super().__init__()
        self.net = mlp(obs_dim + act_dim + latent_dim, 1, hidden_dim, 3)

    def forward(self, obs, actions, z):
        return self.net(torch.cat([obs, actions, z], -1))


TRANSITION_FIELDS = ("observations", "actions", "rewards", "next_observations")  # the order of transition_inputs


def transition_inputs(context: dict) -> torch.Tensor:
    return torch.cat([context["observations"], context["actions"], context["rewards"], context["next_observations"]], -1)


def masked_mean(codes, mask):
    """Mean over the context dimension (-2) of the entries where mask is 1; zeros for an empty context."""
    return (codes * mask).sum(-2) / mask.sum(-2).clamp(min=1)


class Encoder(nn.Module):
    """Per-transition code tanh(f(s, a, r, s') + noise), noise of learned variance in [0.1, 10] in training only."""

    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim):
        super().__init__()
        self.net = mlp(2 * obs_dim + act_dim + 1, latent_dim, hidden_dim, 2)
        self.noise_logvar = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, transitions, sample_noise: bool):
        mean = self.net(transitions)
        std = self.noise_logvar.exp().clamp(0.1, 10.0).sqrt()
        return torch.tanh(mean + std * torch.randn_like(mean) if sample_noise else mean)


class GaussianHead(nn.Module):
    """mbrl-lib's GaussianMLP (2 hidden layers): mean and log-variance, soft-bounded by learned limits."""

    def __init__(self, in_dim, out_dim, hidden_dim):
        super().__init__()
        self.net = mlp(in_dim, 2 * out_dim, hidden_dim, 2)
        self.max_logvar = nn.Parameter(torch.full((out_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), -10.0))

    def forward(self, x):
        mean, logvar = self.net(x).chunk(2, -1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        return mean, self.min_logvar + F.softplus(logvar - self.min_logvar)

    def bound_loss(self):
        return 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())


def gaussian_nll(mean, logvar, target):
    """mbrl-lib's gaussian_nll per row: mean over dims of (mean - target)^2 exp(-logvar) + logvar (no 1/2, no log 2pi)."""
    return ((mean - target) ** 2 * torch.exp(-logvar) + logvar).mean(-1)


class Decoder(nn.Module):
    """Reconstructs each context transition's (s' - s, r) from [z, s, a] with two Gaussian heads."""

    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim):
        super().__init__()
        self.dynamics = GaussianHead(latent_dim + obs_dim + act_dim, obs_dim, hidden_dim)
        self.reward = GaussianHead(latent_dim + obs_dim + act_dim, 1, hidden_dim)

    def nll(self, z, context):
        """Reconstruction NLL of context transitions under codes z, the two broadcast against each other: (...,)."""
        shape = torch.broadcast_shapes(z.shape[:-1], context["observations"].shape[:-1])
        obs, actions, rewards, next_obs = (context[k].expand(*shape, -1) for k in TRANSITION_FIELDS)
        x = torch.cat([z.expand(*shape, -1), obs, actions], -1)
        return gaussian_nll(*self.dynamics(x), next_obs - obs) + gaussian_nll(*self.reward(x), rewards)

    def bound_loss(self):
        return self.dynamics.bound_loss() + self.reward.bound_loss()


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


class MetaNF:
    def __init__(self, obs_dim, act_dim, args: Args, device):
        self.args, self.act_dim = args, act_dim
        latent, hidden = args.latent_dim, args.hidden_dim
        self.encoder = Encoder(obs_dim, act_dim, latent, args.encoder_hidden_dim).to(device)
        self.decoder = Decoder(obs_dim, act_dim, latent, args.encoder_hidden_dim).to(device)
        if args.flow:
            flow_args = (obs_dim, act_dim, latent, hidden, args.flow_blocks, args.flow_embedding_dim)
            self.actor, self.actor_target = FlowActor(*flow_args).to(device), FlowActor(*flow_args).to(device)
        else:
            self.actor = GaussianActor(obs_dim, act_dim, latent, hidden).to(device)
            self.actor_target = GaussianActor(obs_dim, act_dim, latent, hidden).to(device)
        self.qf1 = QNetwork(obs_dim, act_dim, latent, hidden).to(device)
        self.qf2 = QNetwork(obs_dim, act_dim, latent, hidden).to(device)
        self.qf1_target = QNetwork(obs_dim, act_dim, latent, hidden).to(device)
        self.qf2_target = QNetwork(obs_dim, act_dim, latent, hidden).to(device)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.encoder_optimizer = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=args.lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.lr)
        self.q_optimizer = torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=args.lr)
        self.total_it = 0
        self.actor_log = {}  # the latest actor-step losses, logged on every step

    def representation_loss(self, context, mask, task_idx) -> tuple:
        z = masked_mean(self.encoder(transition_inputs(context), sample_noise=True), mask)
        recon_loss = masked_mean(self.decoder.nll(z[:, None], context)[..., None], mask).mean() + self.decoder.bound_loss()
        focal_loss = focal_distance_loss(z, task_idx)
        return recon_loss + self.args.beta * focal_loss, z, {"losses/recon_loss": recon_loss, "losses/focal_loss": focal_loss}

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
            bc_loss = -self.actor.log_prob(obs, z, actions).mean() if args.flow else F.mse_loss(pi, actions)
            actor_loss = -lmbda * min_qf_pi.mean() + args.bc_weight * bc_loss
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
        return self.encoder(transitions, sample_noise=False)

    def actor_diagnostics(self, batch: dict, context: dict, mask: torch.Tensor, step: int) -> dict:
        """How hard each term of the actor loss pulls, measured without training: the norm of the actor parameters'
        gradient from the Q term and from the BC term, and the mean squared distance of a policy action (latent x ~
        N(0, I)) to the dataset action. z is the mean code without noise and x comes from a generator of its own, so
        training's random stream is untouched."""
        args, obs, actions = self.args, batch["observations"], batch["actions"]
        z = masked_mean(self.context_codes(transition_inputs(context)), mask)[:, None].expand(-1, obs.shape[1], -1)
        generator = torch.Generator(device=obs.device).manual_seed(step)
        pi = self.action_from_latent(obs, z, torch.randn(*actions.shape, generator=generator, device=obs.device))
        min_qf_pi = torch.min(self.qf1(obs, pi, z), self.qf2(obs, pi, z))
        q_term = -args.alpha / min_qf_pi.abs().mean().detach() * min_qf_pi.mean()
        bc_term = args.bc_weight * (-self.actor.log_prob(obs, z, actions).mean() if args.flow else F.mse_loss(pi, actions))
        params = list(self.actor.parameters())
        norms = {}
        for name, term in (("q", q_term), ("bc", bc_term)):
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            norms[name] = torch.sqrt(sum((g**2).sum() for g in grads if g is not None))
        return {"diagnostics/actor_grad_norm_q": norms["q"], "diagnostics/actor_grad_norm_bc": norms["bc"],
                "diagnostics/action_sq_distance": ((pi - actions) ** 2).sum(-1).mean().detach()}

    NETWORKS = ("encoder", "decoder", "actor", "actor_target", "qf1", "qf2", "qf1_target", "qf2_target")
    OPTIMIZERS = ("encoder_optimizer", "actor_optimizer", "q_optimizer")

    def state_dict(self) -> dict:
        state = {k: getattr(self, k).state_dict() for k in self.NETWORKS + self.OPTIMIZERS}
        return {**state, "total_it": self.total_it}

    def action_from_latent(self, obs, z, x):
        """The action of base latent x: tanh(f(x; s, z)) for the flow, tanh(mean + std x) for the Gaussian actor."""
        if self.args.flow:
            return self.actor.from_latent(obs, z, x)
        mean, log_std = self.actor(obs, z)
        return torch.tanh(mean + log_std.exp() * x)

    @torch.no_grad()
    def evaluation_action(self, obs, z, generator):
        """The action of --act for a batch of states (n, obs_dim): x = 0; x ~ N(0, I) from generator; or, of x = 0 and
        --act-samples draws, the action of highest min(Q1, Q2)(s, a, z), x = 0 on ties."""
        args, n = self.args, obs.shape[0]
        if args.act == "zero":
            return self.actor.act(obs, z)
        if args.act == "sample":
            return self.action_from_latent(obs, z, torch.randn(n, self.act_dim, generator=generator, device=obs.device))
        draws = torch.randn(args.act_samples, n, self.act_dim, generator=generator, device=obs.device)
        x = torch.cat([torch.zeros_like(draws[:1]), draws])
        obs, z = obs.expand(len(x), -1, -1), z.expand(len(x), -1, -1)
        actions = self.action_from_latent(obs, z, x)
        best = torch.min(self.qf1(obs, actions, z), self.qf2(obs, actions, z)).argmax(0)  # (n, 1), first maximum
        return actions.gather(0, best[None].expand(1, -1, self.act_dim))[0]

    def load_state_dict(self, state: dict):
        for k in self.NETWORKS + self.OPTIMIZERS:
            getattr(self, k).load_state_dict(state[k])
        self.total_it = state["total_it"]


class RepresentationSelector:
    """Meta-NF's zero-shot selection: after t steps, candidate code z_j (of transition j) scores the mean decoder NLL
    of all t observed transitions under z_j, and the lowest score conditions the next action (first on ties). The
    score sums are updated incrementally, one new row and one new column per step: O(t) decoder rows, not O(t^2)."""

    def __init__(self, decoder, n_tasks, horizon, latent_dim, device):
        self.decoder, self.horizon, self.device = decoder, horizon, device
        self.codes = torch.zeros(n_tasks, horizon, latent_dim, device=device)
        self.score_sum = torch.zeros(n_tasks, horizon, device=device)
        self.z = torch.zeros(n_tasks, latent_dim, device=device)
        self.context, self.t = {}, 0

    def reset(self):
        self.score_sum.zero_()
        self.z.zero_()
        self.context, self.t = {}, 0

    @torch.no_grad()
    def add(self, transition: dict, codes: torch.Tensor):
        t = self.t
        if t == 0:
            self.context = {k: v.new_zeros(v.shape[0], self.horizon, v.shape[-1]) for k, v in transition.items()}
        for k, v in transition.items():
            self.context[k][:, t] = v
        self.codes[:, t] = codes
        newest = {k: v[:, None] for k, v in transition.items()}
        self.score_sum[:, : t + 1] += self.decoder.nll(self.codes[:, : t + 1], newest)
        if t > 0:
            past = {k: v[:, :t] for k, v in self.context.items()}
            self.score_sum[:, t] += self.decoder.nll(self.codes[:, t : t + 1], past).sum(1)
        best = self.score_sum[:, : t + 1].argmin(1)
        self.z = self.codes[torch.arange(len(best), device=self.device), best]
        self.t = t + 1


@torch.no_grad()
def evaluate(agent, envs, sampler, protocol, args, obs_mean, obs_std, device, on_step=None) -> np.ndarray:
    """Mean return per task over args.eval_episodes episodes acting by args.act, all tasks stepped in lockstep.

    zero_shot: the context starts empty (z = 0) and every transition of the episode joins it as it happens; z is
    the selected code (args.selection) or the mean code; few_shot: before each episode, args.few_shot_context
    offline transitions of the task join the context, and z, their mean code, stays fixed during the episode.
    Episode k resets every env with seed args.seed + k."""
    n, latent = len(envs), args.latent_dim
    mean, std = torch.as_tensor(obs_mean, device=device), torch.as_tensor(obs_std, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    action_generator = torch.Generator(device=device).manual_seed(args.seed)  # its own: contexts stay the same
    task_idx = torch.arange(n, device=device)
    returns = np.zeros((n, args.eval_episodes))
    code_sum, count = torch.zeros(n, latent, device=device), torch.zeros(n, 1, device=device)
    selector = None
    if protocol == "zero_shot" and args.selection:
        selector = RepresentationSelector(agent.decoder, n, HORIZONS[args.env], latent, device)
    for episode in range(args.eval_episodes):
        obs = np.stack([env.reset(seed=args.seed + episode)[0] for env in envs])
        if protocol == "zero_shot":
            code_sum.zero_()
            count.zero_()
            if selector:
                selector.reset()
        else:
            context, _ = sampler.sample_context(task_idx, args.few_shot_context, generator=generator)
            code_sum += agent.context_codes(transition_inputs(context)).sum(1)
            count += args.few_shot_context
        active = np.ones(n, dtype=bool)
        while active.any():
            obs_t = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
            z = selector.z if selector else code_sum / count.clamp(min=1)
            actions = agent.evaluation_action(obs_t, z, action_generator).cpu().numpy()
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
                codes = agent.context_codes(transition_inputs(transition))
                code_sum += codes * stepped_t
                count += stepped_t
                if selector:  # a finished task's entries are never used again: it does not act any more
                    selector.add(transition, codes)
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
    agent = MetaNF(dataset.obs_dim, dataset.act_dim, args, device)
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
        protocols = ("zero_shot", "few_shot")
        for protocol in protocols:
            results[protocol] = {}
            for name, (ids, sampler) in task_sets.items():
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
        task_idx = torch.randint(len(train_ids), (args.meta_batch_size,), device=device)
        batch = train_sampler.sample(task_idx, args.batch_size)
        context, mask = train_sampler.sample_context(task_idx, args.context_size, trajectory=True)
        log = agent.update(batch, context, mask, task_idx)
        step = global_step + 1
        if step % args.log_every == 0 or step == args.total_steps:
            log.update(agent.actor_diagnostics(batch, context, mask, step))
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
