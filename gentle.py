# GENTLE (Zhou, Gao, Zhang, Yu, "Generalizable Task Representation Learning for Offline Meta-Reinforcement Learning with
# Data Limitations", AAAI 2024): a task auto-encoder trained on real and pseudo-transitions, the latter labelled by
# per-task dynamics ensembles, on GENTLE's TD3+BC; `--no-pseudo-transitions` is the Meta-NF paper's GENTLE column.
# Reference code: https://github.com/LAMDA-RL/GENTLE. Docs and deviations from the reference code: docs/gentle.md
import datetime
import importlib.util
import hashlib
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

ALGORITHM = "gentle"
# With --checkpoint every argument comes from the saved run but these, which change neither the networks nor the random
# stream of training (--total-steps trains a run further); with --eval-only also EVALUATION_OPTIONS.
RESUME_OPTIONS = ("checkpoint", "eval_only", "exp_name", "total_steps", "eval_every", "log_every", "device", "save_model",
                  "data_dir", "checkpoint_every", "capture_video")
EVALUATION_OPTIONS = ("eval_episodes", "few_shot_context", "one_shot_samples", "one_shot_steps")
# The valid values of every numeric argument, as intervals; check_args refuses any other before anything is written.
ARG_RANGES = {
    "seed": "[0, 4294967295]", "total_steps": "[1, inf)", "eval_every": "[1, inf)", "eval_episodes": "[1, inf)",
    "log_every": "[1, inf)", "checkpoint_every": "[1, inf)", "n_tasks": "[2, inf)", "task_seed": "[0, 4294967295]",
    "n_train": "[1, inf)", "meta_batch_size": "[1, inf)", "batch_size": "[1, inf)", "context_size": "[1, inf)",
    "few_shot_context": "[1, inf)", "latent_dim": "[1, inf)", "hidden_dim": "[1, inf)", "encoder_hidden_dim": "[1, inf)",
    "lr": "(0, inf)", "gamma": "[0, 1]", "tau": "(0, 1]", "reward_scale": "(0, inf)", "alpha": "[0, inf)",
    "policy_noise": "[0, inf)", "noise_clip": "[0, inf)", "policy_frequency": "[1, inf)",
    "recon_weight": "[0, inf)", "pseudo_fraction": "[0, 1]", "relabel_every": "[1, inf)", "relabel_states": "[1, inf)",
    "negative_tasks": "[1, inf)", "ensemble_size": "[1, inf)", "ensemble_hidden_dim": "[1, inf)",
    "ensemble_batch_size": "[1, inf)", "ensemble_lr": "(0, inf)", "ensemble_max_epochs": "[1, inf)",
    "ensemble_holdout": "(0, 1)", "ensemble_patience": "[1, inf)", "dynamics_seed": "[0, 4294967295]",
    "one_shot_samples": "[1, inf)", "one_shot_steps": "[1, inf)",
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
    """episodes per task and protocol at each evaluation (one-shot: runs of the whole protocol); a task's score is their
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
    """training tasks per gradient step, drawn without replacement as GENTLE does (if unset: every training task)"""
    batch_size: int = 256
    """RL transitions per task of the meta-batch"""
    context_size: int = 256
    """transitions in a training context of the task auto-encoder, real and pseudo together (GENTLE's 256)"""
    few_shot_context: int = 20
    """few-shot protocol: offline transitions appended to the context before each episode (the horizon)"""
    latent_dim: int = 5
    """size of the task representation z (5; 10 for hopper-params and walker-params)"""
    hidden_dim: int = 64
    """width of the 3 hidden layers of actor and critics (256; 64 for point-robot)"""
    encoder_hidden_dim: int = 64
    """width of the 3 hidden layers of the encoder and of the decoder (256; 64 for point-robot)"""
    recon_weight: float = 10.0
    """weight of the task auto-encoder's reconstruction loss"""
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
    pseudo_transitions: bool = True
    """augment the auto-encoder's contexts with pseudo-transitions of the dynamics ensembles (GENTLE); off: real data only,
    the Meta-NF paper's GENTLE"""
    pseudo_fraction: float = 0.95
    """share of a training context that is pseudo-transitions (GENTLE's relabel_data_ratio)"""
    relabel_every: int = 400
    """gradient steps between two rebuilds of the pseudo-transitions (GENTLE: once per 400-step iteration)"""
    relabel_states: int = 2560
    """offline states per training task relabelled at each rebuild"""
    negative_tasks: int = 3
    """other training tasks whose ensembles also label a task's relabelled states (3; 1 for cheetah-dir; at most
    the number of other training tasks)"""
    ensemble_size: int = 7
    """dynamics models per training task"""
    ensemble_hidden_dim: int = 64
    """width of a dynamics model's 2 (reward families) or 3 (hopper/walker) Swish layers (256; 64 for point-robot)"""
    ensemble_lr: float = 1e-3
    """learning rate of the dynamics models"""
    ensemble_batch_size: int = 256
    """transitions per model in a dynamics-fitting step"""
    ensemble_holdout: float = 0.2
    """share of a task's transitions held out for early stopping (at most 1000)"""
    ensemble_patience: int = 5
    """fitting stops after this many epochs in which no model's hold-out error improved by more than 1%"""
    ensemble_max_epochs: int = 500
    """fitting stops after this many epochs in any case"""
    dynamics_seed: Optional[int] = None
    """seed of the ensembles' initialization, splits and batches (if unset: the run's seed, so that each run seed fits
    its own ensembles, as GENTLE fits them per run)"""
    dynamics_dir: Optional[str] = None
    """where fitted ensembles are kept and looked up (if unset: {data_dir}/{env}/{behavior}/dynamics)"""
    one_shot_samples: int = 20
    """one-shot protocol: transitions collected under z = 0 with the stochastic policy (the horizon)"""
    one_shot_steps: int = 600
    """one-shot protocol: scored env steps per task and run (GENTLE's num_steps_per_eval)"""


def env_defaults(env: str) -> dict:
    """The defaults that depend on the task family (`--env X --help` shows X's; Args() holds point-robot's). In code:
    resolve_unset(Args(env=X, **env_defaults(X), **overrides))."""
    point, params = env == "point-robot", env in ("hopper-params", "walker-params")
    return dict(few_shot_context=HORIZONS[env], latent_dim=10 if params else 5, hidden_dim=64 if point else 256,
                gamma=0.9 if point else 0.99, encoder_hidden_dim=64 if point else 256,
                ensemble_hidden_dim=64 if point else 256, negative_tasks=1 if env == "cheetah-dir" else 3,
                one_shot_samples=HORIZONS[env])


def resolve_unset(args: Args) -> Args:
    """The defaults that depend on other arguments."""
    n_train_tasks = 2 if args.env == "cheetah-dir" else args.n_train
    return replace(args, meta_batch_size=args.meta_batch_size or n_train_tasks,
                   dynamics_seed=args.seed if args.dynamics_seed is None else args.dynamics_seed)


# GENTLE's use_next_obs_in_context (true only in its hopper and walker rand-params configs): there the tasks differ in
# their dynamics, so the encoder reads (s, a, r, s') and the decoder and dynamics models predict (r, s' - s); in the
# reward families the encoder reads (s, a, r) and they predict r alone.
NEXT_OBS_IN_CONTEXT = ("hopper-params", "walker-params")

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
    """Per-transition code tanh(f(s, a, r, s')), or tanh(f(s, a, r)) where s' is not in the context (the s' columns of
    transition_inputs are dropped); a context's z is the mean of its codes."""

    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim, next_obs_in_context):
        super().__init__()
        self.unused = 0 if next_obs_in_context else obs_dim
        self.net = mlp(obs_dim + act_dim + 1 + obs_dim - self.unused, latent_dim, hidden_dim, 3)

    def forward(self, transitions):
        return torch.tanh(self.net(transitions[..., : transitions.shape[-1] - self.unused]))


class Decoder(nn.Module):
    """GENTLE's decoder: (s, a, z) -> r, or (r, s' - s) where s' is in the context (the normalized state's change)."""

    def __init__(self, obs_dim, act_dim, latent_dim, hidden_dim, next_obs_in_context):
        super().__init__()
        self.net = mlp(obs_dim + act_dim + latent_dim, 1 + (obs_dim if next_obs_in_context else 0), hidden_dim, 3)

    def forward(self, obs, actions, z):
        return self.net(torch.cat([obs, actions, z], -1))


def dynamics_targets(transitions: dict, next_obs_in_context: bool) -> torch.Tensor:
    """What the decoder and the dynamics models predict from (s, a): r, or (r, s' - s) where s' is in the context."""
    if not next_obs_in_context:
        return transitions["rewards"]
    return torch.cat([transitions["rewards"], transitions["next_observations"] - transitions["observations"]], -1)


def tae_loss(decoder, context, z, next_obs_in_context):
    """GENTLE's task auto-encoder loss (before its weight, recon_weight): the MSE, over a context's transitions and the
    output dimensions, of r (or (r, s' - s)) reconstructed from (s, a) and the task's mean code z (tasks, D)."""
    z = z[:, None].expand(-1, context["observations"].shape[1], -1)
    prediction = decoder(context["observations"], context["actions"], z)
    return F.mse_loss(prediction, dynamics_targets(context, next_obs_in_context))


class DynamicsEnsemble(nn.Module):
    """ensemble_size deterministic Swish MLPs (s, a) -> r per training task, or (s, a) -> (r, s' - s) where s' is in the
    context (GENTLE's pretrain_dynamics: 2 hidden layers, 3 with s'), held as one stack of weights (tasks, members, in,
    out), so that all of them train and predict in the same batched matmuls."""

    WEIGHT_DECAY = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5)  # per layer, from the input to the output (GENTLE's)

    def __init__(self, n_tasks, obs_dim, act_dim, args, generator, device):
        super().__init__()
        next_obs = args.env in NEXT_OBS_IN_CONTEXT
        dims = [obs_dim + act_dim, *[args.ensemble_hidden_dim] * (3 if next_obs else 2), 1 + (obs_dim if next_obs else 0)]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1 / math.sqrt(d_in)  # nn.Linear's default, drawn from the ensembles' own generator
            for params, shape in ((self.weights, (d_in, d_out)), (self.biases, (1, d_out))):
                uniform = torch.rand(n_tasks, args.ensemble_size, *shape, generator=generator)
                params.append(nn.Parameter(((2 * uniform - 1) * bound).to(device)))

    def forward(self, x, model_idx=None):
        """x (G, members, N, in) -> (G, members, N, out): row g through the models of task g, or of task model_idx[g]."""
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if model_idx is not None:
                weight, bias = weight[model_idx], bias[model_idx]
            x = torch.matmul(x, weight) + bias
            x = F.silu(x) if i < len(self.weights) - 1 else x
        return x

    def decay_loss(self):
        """Per model (tasks, members): sum over layers of decay * ||W||^2 / 2."""
        decays = self.WEIGHT_DECAY[: len(self.weights) - 1] + self.WEIGHT_DECAY[-1:]  # the output layer's is the last
        return sum(decay * 0.5 * (w**2).sum((-2, -1)) for decay, w in zip(decays, self.weights))


def fit_dynamics(ensemble, sampler, args, generator) -> tuple:
    """GENTLE's dynamics pretraining, every task's ensemble at once: a task's transitions are split into a hold-out set
    (ensemble_holdout, at most 1000) and a training set; each model trains on its own bootstrap resample of the training
    set (MSE plus weight decay, Adam); after every epoch, each model keeps its weights of lowest hold-out MSE; a task's
    ensemble stops when none of its models improved by more than 1% for ensemble_patience epochs (its best weights are
    final from then on; the models are independent, so the others training on does not change them), and fitting stops
    when every task's has. Returns ((tasks, members) hold-out MSE, epochs)."""
    device = sampler.device
    n_tasks, members, sizes = len(sampler.task_ids), args.ensemble_size, sampler.sizes.cpu()
    inputs = torch.cat([sampler.observations, sampler.actions], -1)
    targets = dynamics_targets(vars(sampler), args.env in NEXT_OBS_IN_CONTEXT)
    n_max = int(sizes.max())
    padding = torch.arange(n_max)[None] >= sizes[:, None]
    order = torch.argsort(torch.rand(n_tasks, n_max, generator=generator) + 2.0 * padding, 1)  # valid indices first
    n_holdout = (sizes * args.ensemble_holdout).long().clamp(1, 1000)
    n_train = sizes - n_holdout
    holdout_idx = order[:, : int(n_holdout.max())]
    holdout_mask = (torch.arange(holdout_idx.shape[1])[None] < n_holdout[:, None]).float().to(device)
    length = int(n_train.max())
    draws = (torch.rand(n_tasks, members, length, generator=generator) * n_train[:, None, None]).long()
    bootstrap = order.gather(1, (n_holdout[:, None, None] + draws).flatten(1)).view(n_tasks, members, length).to(device)
    rows = torch.arange(n_tasks, device=device)[:, None, None]
    holdout_x = inputs[rows[:, :, 0], holdout_idx.to(device)][:, None].expand(-1, members, -1, -1)
    holdout_y = targets[rows[:, :, 0], holdout_idx.to(device)][:, None]
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=args.ensemble_lr)
    best_error = torch.full((n_tasks, members), float("inf"), device=device)
    best = [p.detach().clone() for p in ensemble.parameters()]
    stale, epoch = torch.zeros(n_tasks, dtype=torch.long, device=device), 0
    while bool((stale < args.ensemble_patience).any()) and epoch < args.ensemble_max_epochs:
        permutation = torch.argsort(torch.rand(n_tasks, members, length, generator=generator), -1).to(device)
        for start in range(0, length, args.ensemble_batch_size):
            idx = bootstrap.gather(2, permutation[..., start : start + args.ensemble_batch_size])
            error = ((ensemble(inputs[rows, idx]) - targets[rows, idx]) ** 2).mean((-2, -1))
            optimizer.zero_grad()
            (error.sum() + ensemble.decay_loss().sum()).backward()
            optimizer.step()
        epoch += 1
        if epoch % 10 == 0:  # one host synchronization per 10 epochs, for the progress line
            print(f"dynamics ensembles: epoch {epoch} (at most {args.ensemble_max_epochs}), {int((stale < args.ensemble_patience).sum())}"
                  f" of {n_tasks} tasks still improving, best hold-out MSE {best_error.min(1).values.mean().item():.4g}", flush=True)
        with torch.no_grad():
            error = ((ensemble(holdout_x) - holdout_y) ** 2).mean(-1)
            error = (error * holdout_mask[:, None]).sum(-1) / holdout_mask.sum(-1)[:, None]
            improved = (error < 0.99 * best_error) & (stale < args.ensemble_patience)[:, None]  # by more than 1%
            best_error = torch.where(improved, error, best_error)
            for kept, p in zip(best, ensemble.parameters()):
                kept.copy_(torch.where(improved[:, :, None, None], p, kept))
            stale = torch.where(improved.any(1), 0, stale + 1)
    with torch.no_grad():
        for kept, p in zip(best, ensemble.parameters()):
            p.copy_(kept)
    return best_error, epoch


def load_or_fit_dynamics(sampler, obs_dim, act_dim, args, device) -> tuple:
    """The ensembles of the training tasks, fitted once per dataset, task split, ensemble settings and dynamics seed (by
    default the run's) and kept in dynamics_dir, so that a run resumed or repeated loads its fit. Fitting draws only
    from its own generator (dynamics_seed): a run's random stream is the same whether the ensembles were fitted or
    loaded."""
    digest = hashlib.sha256()
    for field in ("observations", "actions", "rewards", "next_observations"):
        digest.update(getattr(sampler, field).cpu().numpy().tobytes())
    settings = {k: v for k, v in asdict(args).items() if k.startswith("ensemble_") or k == "dynamics_seed"}
    settings["next_obs_in_context"] = args.env in NEXT_OBS_IN_CONTEXT  # what the models predict, and their depth
    digest.update(repr((sampler.task_ids, sorted(settings.items()))).encode())
    folder = args.dynamics_dir or os.path.join(args.data_dir, args.env, args.behavior, "dynamics")
    path = os.path.join(folder, f"ensemble_{digest.hexdigest()[:16]}.pt")
    generator = torch.Generator().manual_seed(args.dynamics_seed)
    ensemble = DynamicsEnsemble(len(sampler.task_ids), obs_dim, act_dim, args, generator, device)
    if os.path.exists(path):
        try:
            saved = torch.load(path, map_location=device, weights_only=False)
            ensemble.load_state_dict(saved["ensemble"])
        except Exception as e:
            raise SystemExit(f"error: the dynamics ensembles in {path} cannot be read ({e}); remove the file to fit them "
                             "again") from e
        print(f"dynamics ensembles: loaded {path} (fitted in {saved['fit_time']:.0f} s)", flush=True)
        return ensemble, saved
    print(f"dynamics ensembles: fitting {len(sampler.task_ids)} x {args.ensemble_size} models", flush=True)
    start = time.time()
    holdout_error, epochs = fit_dynamics(ensemble, sampler, args, generator)
    info = {"holdout_mse": holdout_error.cpu(), "epochs": epochs, "fit_time": time.time() - start}
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, lambda p: torch.save({"ensemble": ensemble.state_dict(), **info}, p), suffix=".pt")
    mse = ", ".join(f"{e:.3g}" for e in holdout_error.mean(1).cpu().tolist())
    print(f"dynamics ensembles: {epochs} epochs in {info['fit_time']:.0f} s, hold-out MSE per task {mse}; saved in {path}",
          flush=True)
    return ensemble, info


class GENTLE:
    def __init__(self, obs_dim, act_dim, args: Args, device):
        self.args = args
        latent, hidden = args.latent_dim, args.hidden_dim
        self.next_obs_in_context = args.env in NEXT_OBS_IN_CONTEXT
        self.encoder = Encoder(obs_dim, act_dim, latent, args.encoder_hidden_dim, self.next_obs_in_context).to(device)
        self.decoder = Decoder(obs_dim, act_dim, latent, args.encoder_hidden_dim, self.next_obs_in_context).to(device)
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
        self.ensemble = None  # the training tasks' dynamics ensembles, with --pseudo-transitions
        self.pseudo = None  # the pseudo-transitions of the latest relabel: fields (tasks, size, dim) and sizes

    def representation_loss(self, context, mask, task_idx) -> tuple:
        """GENTLE's task auto-encoder: every context transition's r (or (r, s' - s)) reconstructed from its (s, a) and
        the task's mean code, the MSE weighted by recon_weight; no contrastive term."""
        codes = self.encoder(transition_inputs(context))
        z = masked_mean(codes, mask)
        recon_loss = tae_loss(self.decoder, context, z, self.next_obs_in_context)
        return self.args.recon_weight * recon_loss, z, {"losses/tae_loss": recon_loss}

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

    @torch.no_grad()
    def relabel(self, sampler):
        """GENTLE's make_relabel, every training task at once. For task i: relabel_states random offline states, z_i the
        mean code of their transitions, actions tanh(mean) of the target actor under z_i; these (s, a) are labelled
        r (or (r, s' - s)) by the mean of task i's ensemble and, as cross-task pseudo-transitions, by the ensembles of
        negative_tasks other training tasks drawn without replacement. Each labelled set joins the buffer of the task
        whose ensemble labelled it; the buffers replace the previous ones."""
        n, device = self.args.relabel_states, sampler.device
        n_tasks = len(sampler.task_ids)
        negatives = min(self.args.negative_tasks, n_tasks - 1)
        tasks = torch.arange(n_tasks, device=device)
        real = sampler.sample(tasks, n)
        z = self.context_codes(transition_inputs(real)).mean(1)
        actions = self.actor_target.act(real["observations"], z[:, None].expand(-1, n, -1))
        draw = torch.rand(n_tasks, n_tasks, device=device) + 2 * torch.eye(n_tasks, device=device)  # own task sorts last
        labellers = torch.cat([tasks[:, None], draw.argsort(1)[:, :negatives]], 1).flatten()
        source = tasks.repeat_interleave(1 + negatives)
        obs, actions = real["observations"][source], actions[source]
        prediction = self.ensemble(torch.cat([obs, actions], -1)[:, None], labellers).mean(1)
        # where s' is not in the context it is not labelled: NaN, which the encoder never reads (a read would show)
        next_obs = obs + prediction[..., 1:] if self.next_obs_in_context else torch.full_like(obs, float("nan"))
        labelled = {"observations": obs, "actions": actions, "rewards": prediction[..., :1], "next_observations": next_obs}
        one_hot = F.one_hot(labellers, n_tasks)
        rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # the labelled set's slot in its labeller's buffer
        sizes = one_hot.sum(0) * n
        slots = rank[:, None] * n + torch.arange(n, device=device)
        capacity = int(sizes.max())  # one host synchronization per relabel
        self.pseudo = {"sizes": sizes, "labellers": labellers}
        for key, value in labelled.items():
            buffer = torch.zeros(n_tasks, capacity, value.shape[-1], device=device)
            buffer[labellers[:, None], slots] = value
            self.pseudo[key] = buffer

    def sample_context(self, sampler, task_idx) -> tuple:
        """A training context per task of task_idx: GENTLE's mix of context_size - int(pseudo_fraction * context_size)
        real offline transitions and the rest drawn uniformly from the task's pseudo-transitions; without
        pseudo-transitions, context_size real ones."""
        args = self.args
        if self.pseudo is None:
            return sampler.sample_context(task_idx, args.context_size)
        n_pseudo = int(args.pseudo_fraction * args.context_size)
        real, _ = sampler.sample_context(task_idx, args.context_size - n_pseudo)
        u = torch.rand(len(task_idx), n_pseudo, device=sampler.device)
        index = (u * self.pseudo["sizes"][task_idx, None]).long()
        context = {k: torch.cat([real[k], self.pseudo[k][task_idx[:, None], index]], 1) for k in real if k in self.pseudo}
        return context, torch.ones(len(task_idx), args.context_size, 1, device=sampler.device)

    NETWORKS = ("encoder", "decoder", "actor", "actor_target", "qf1", "qf2", "qf1_target", "qf2_target")
    OPTIMIZERS = ("encoder_optimizer", "actor_optimizer", "q_optimizer")

    def state_dict(self) -> dict:
        state = {k: getattr(self, k).state_dict() for k in self.NETWORKS + self.OPTIMIZERS}
        return {**state, "total_it": self.total_it, "pseudo": self.pseudo}  # a run resumes between two relabels

    def load_state_dict(self, state: dict):
        for k in self.NETWORKS + self.OPTIMIZERS:
            getattr(self, k).load_state_dict(state[k])
        self.total_it = state["total_it"]
        device = self.qf1_target.net[0].weight.device
        pseudo = state.get("pseudo")  # absent: a checkpoint of a relabel step, whose buffers are made again
        self.pseudo = None if pseudo is None else {k: v.to(device) for k, v in pseudo.items()}


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
def evaluate_one_shot(agent, envs, args, obs_mean, obs_std, device) -> np.ndarray:
    """GENTLE's one-shot protocol, per task the mean return of its scored episodes, averaged over args.eval_episodes runs;
    all tasks stepped in lockstep.

    A run first collects args.one_shot_samples transitions with the stochastic policy under z = 0 (an env that ends an
    episode is reset and goes on). Then, until args.one_shot_steps scored steps, each deterministic scored episode is
    preceded by args.one_shot_samples transitions resampled with replacement from that collection, appended to a growing
    context from which z is inferred. Run k resets every env with seed args.seed + k; the policy noise and the resampling
    come from a generator seeded with args.seed."""
    n, samples = len(envs), args.one_shot_samples
    mean, std = torch.as_tensor(obs_mean, device=device), torch.as_tensor(obs_std, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    returns = np.zeros((n, args.eval_episodes))
    for run in range(args.eval_episodes):
        obs = np.stack([env.reset(seed=args.seed + run)[0] for env in envs])
        collected = torch.zeros(n, samples, args.latent_dim, device=device)  # the codes of the collected transitions
        z = torch.zeros(n, args.latent_dim, device=device)
        for t in range(samples):
            obs_t = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
            action_mean, log_std = agent.actor(obs_t, z)
            noise = torch.randn(action_mean.shape, generator=generator, device=device)
            actions = torch.tanh(action_mean + log_std.exp() * noise).cpu().numpy()
            next_obs, rewards, ended = obs.copy(), np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool)
            for j, env in enumerate(envs):
                next_obs[j], rewards[j], terminated, truncated, _ = env.step(actions[j])
                ended[j] = terminated or truncated
            transition = {
                "observations": obs_t,
                "actions": torch.as_tensor(actions, device=device),
                "rewards": torch.as_tensor(rewards, device=device)[:, None],
                "next_observations": (torch.as_tensor(next_obs, dtype=torch.float32, device=device) - mean) / std,
            }
            collected[:, t] = agent.context_codes(transition_inputs(transition))
            obs = next_obs
            for j in np.flatnonzero(ended):  # the collection goes on in a new episode
                obs[j] = envs[j].reset()[0]
        code_sum, count = torch.zeros(n, args.latent_dim, device=device), 0
        scored, episode_returns = np.zeros(n, dtype=np.int64), [[] for _ in range(n)]
        while (scored < args.one_shot_steps).any():
            index = torch.randint(samples, (n, samples), generator=generator, device=device)
            code_sum += collected.gather(1, index[..., None].expand(-1, -1, args.latent_dim)).sum(1)
            count += samples
            z = code_sum / count
            active = scored < args.one_shot_steps
            episode_return = np.zeros(n)
            for j in np.flatnonzero(active):
                obs[j] = envs[j].reset()[0]
            while active.any():
                obs_t = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
                actions = agent.actor.act(obs_t, z).cpu().numpy()
                for j in np.flatnonzero(active):
                    obs[j], reward, terminated, truncated, _ = envs[j].step(actions[j])
                    episode_return[j] += reward
                    scored[j] += 1
                    if terminated or truncated:
                        active[j] = False
                        episode_returns[j].append(episode_return[j])
        returns[:, run] = [np.mean(r) for r in episode_returns]
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
    agent = GENTLE(dataset.obs_dim, dataset.act_dim, args, device)
    start_step = checkpoint["step"] if checkpoint else 0
    if checkpoint:
        agent.load_state_dict(checkpoint["agent"])
        torch.set_rng_state(checkpoint["rng_state"])
        np.random.set_state(checkpoint["numpy_rng_state"])
        random.setstate(checkpoint["python_rng_state"])
        if device.type == "cuda" and checkpoint["cuda_rng_state"] is not None:
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_state"])
    if args.pseudo_transitions and not args.eval_only:
        agent.ensemble, dynamics = load_or_fit_dynamics(train_sampler, dataset.obs_dim, dataset.act_dim, args, device)
        writer.add_scalar("dynamics/holdout_mse", float(dynamics["holdout_mse"].mean()), 0)
        writer.add_scalar("dynamics/fit_time", dynamics["fit_time"], 0)
    task_sets = {"train": (train_ids, train_sampler), "test": (test_ids, test_sampler)}
    eval_envs = {name: [make_env(args.env, i, args.n_tasks, args.task_seed) for i in ids] for name, (ids, _) in task_sets.items()}

    def run_evaluation(step: int) -> dict:
        results = {"algorithm": ALGORITHM, "env": args.env, "seed": args.seed, "step": step, "total_steps": args.total_steps,
                   "data_fingerprint": data_fingerprint}
        protocols = ("zero_shot", "few_shot", "one_shot")
        for protocol in protocols:
            results[protocol] = {}
            for name, (ids, sampler) in task_sets.items():
                if protocol == "one_shot":
                    returns = evaluate_one_shot(agent, eval_envs[name], args, obs_mean, obs_std, device)
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
        if agent.ensemble is not None and (global_step % args.relabel_every == 0 or agent.pseudo is None):
            agent.relabel(train_sampler)
        task_idx = torch.randperm(len(train_ids), device=device)[: args.meta_batch_size]
        batch = train_sampler.sample(task_idx, args.batch_size)
        context, mask = agent.sample_context(train_sampler, task_idx)
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
