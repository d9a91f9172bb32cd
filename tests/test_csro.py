import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import csro  # noqa: E402
from test_algorithms import resolved  # noqa: E402


def club_upper_bound_by_pairs(codes, mean, var):
    """CSRO's own formulation: every (mu_i, z_j) pair of a task's context laid out as a B * B tensor."""
    t, b, d = mean.shape
    positive = -((codes - mean) ** 2 / var).mean()
    mean_expand = mean[:, :, None, :].expand(-1, -1, b, -1).reshape(t, b * b, d)
    var_expand = var[:, :, None, :].expand(-1, -1, b, -1).reshape(t, b * b, d)
    negative = -((codes.repeat(1, b, 1) - mean_expand) ** 2 / var_expand).mean()
    return positive - negative


def test_club_upper_bound_hand_computed():
    codes = torch.tensor([[[1.0], [0.0]]])
    mean = torch.tensor([[[0.0], [1.0]]])
    var = torch.tensor([[[1.0], [2.0]]])
    # matched pairs: (1 - 0)^2 / 1 and (0 - 1)^2 / 2 -> positive = -(1 + 0.5) / 2
    # all pairs (mu_i, z_j): i=0: (1-0)^2/1, (0-0)^2/1; i=1: (1-1)^2/2, (0-1)^2/2 -> negative = -(1 + 0 + 0 + 0.5) / 4
    expected = -0.75 - (-0.375)
    assert csro.club_upper_bound(codes, mean, var).item() == pytest.approx(expected, rel=1e-6)
    assert club_upper_bound_by_pairs(codes, mean, var).item() == pytest.approx(expected, rel=1e-6)


def test_club_upper_bound_equals_the_pairwise_form_and_its_gradient():
    torch.manual_seed(0)
    codes = torch.tanh(torch.randn(3, 7, 4, dtype=torch.float64)).requires_grad_()
    mean = torch.tanh(torch.randn(3, 7, 4, dtype=torch.float64))
    var = F.softplus(torch.tanh(torch.randn(3, 7, 4, dtype=torch.float64)))
    fast, slow = csro.club_upper_bound(codes, mean, var), club_upper_bound_by_pairs(codes, mean, var)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    (fast_grad,), (slow_grad,) = torch.autograd.grad(fast, codes), torch.autograd.grad(slow, codes)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-10, atol=1e-12)


def test_club_model_loss_hand_computed():
    codes, mean, var = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[math.e, 1.0]])
    # (1 / (2e) + log sqrt(e) + 0 + log 1) / 2
    assert csro.club_model_loss(codes, mean, var).item() == pytest.approx((1 / (2 * math.e) + 0.5) / 2, rel=1e-6)


def test_club_network_bounds_its_mean_and_variance():
    net = csro.ClubNetwork(obs_dim=2, act_dim=1, latent_dim=2, hidden_dim=8)
    with torch.no_grad():
        net.net[-1].bias.copy_(torch.tensor([100.0, -100.0, 100.0, -100.0]))
    mean, var = net(torch.zeros(1, 2), torch.zeros(1, 1))
    torch.testing.assert_close(mean, torch.tensor([[1.0, -1.0]]))
    torch.testing.assert_close(var, F.softplus(torch.tensor([[1.0, -1.0]])))


def make_agent(**overrides):
    args = resolved(csro, env="point-robot", n_tasks=6, n_train=3, **overrides)
    torch.manual_seed(0)
    return csro.CSRO(obs_dim=2, act_dim=2, args=args, device="cpu"), args


def random_context(tasks=3, size=16):
    g = torch.Generator().manual_seed(1)
    fields = {"observations": 2, "actions": 2, "rewards": 1, "next_observations": 2, "terminations": 1}
    context = {k: torch.randn(tasks, size, d, generator=g) for k, d in fields.items()}
    return context, torch.ones(tasks, size, 1), torch.arange(tasks)


def test_club_network_and_encoder_take_no_gradient_from_each_other():
    agent, _ = make_agent()
    context, mask, task_idx = random_context()
    before = [p.detach().clone() for p in agent.club_net.parameters()]
    loss, _, _ = agent.representation_loss(context, mask, task_idx)
    # q_psi took its step on the detached codes: it moved, and the encoder got no gradient from it
    assert any(not torch.equal(a, p) for a, p in zip(before, agent.club_net.parameters()))
    assert all(p.grad is None for p in agent.encoder.parameters())
    club_grads = [p.grad.clone() for p in agent.club_net.parameters()]
    loss.backward()
    # the encoder's loss sends nothing to q_psi (its outputs enter detached)
    assert all(torch.equal(g, p.grad) for g, p in zip(club_grads, agent.club_net.parameters()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.encoder.parameters())


def test_club_weight_zero_leaves_only_the_focal_term():
    agent, args = make_agent(club_weight=0.0)
    context, mask, task_idx = random_context()
    loss, _, log = agent.representation_loss(context, mask, task_idx)
    loss.backward()
    with_club_net = [p.grad.clone() for p in agent.encoder.parameters()]
    agent.encoder.zero_grad()
    z = csro.masked_mean(agent.encoder(csro.transition_inputs(context)), mask)
    focal_only = args.focal_weight * csro.focal_distance_loss(z, task_idx)
    focal_only.backward()
    assert loss.item() == pytest.approx(focal_only.item(), rel=1e-6) and log["losses/club_loss"].item() != 0
    for a, p in zip(with_club_net, agent.encoder.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_each_training_task_once_per_step_means_no_positive_pairs():
    z = torch.tensor([[0.0], [1.0], [3.0]])
    # three distinct tasks: only the inverse-distance term, d = 1, 9, 4
    expected = (1 / 1.1 + 1 / 9.1 + 1 / 4.1) / (3 + 1e-3)
    assert csro.focal_distance_loss(z, torch.randperm(3)).item() == pytest.approx(expected, rel=1e-6)


class EpisodeCountingEnv(gym.Env):
    """Obs = [step], reward = the number of the episode (0, 1, ...), so a code equal to the reward tells which episode a
    context transition came from; records every action with its episode."""

    def __init__(self, terminate_after=None):
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.terminate_after, self.episode, self.t, self.log = terminate_after, -1, 0, []

    def reset(self, seed=None, options=None):
        self.episode, self.t = self.episode + 1, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.log.append((self.episode, float(action[0])))
        self.t += 1
        terminated = self.terminate_after is not None and self.t == self.terminate_after
        return np.full(1, self.t, np.float32), float(self.episode), terminated, self.t == 200, {}


class StubAgent:
    """Policy mean atanh(0.3) with a negligible std, so policy actions are 0.3 and random ones are not; records z."""

    def __init__(self):
        self.zs = []

    def actor(self, obs, z):
        self.zs.append(float(z[0, 0]))
        return torch.full((len(obs), 1), math.atanh(0.3)), torch.full((len(obs), 1), -20.0)

    def context_codes(self, transitions):
        return transitions[:, 2:3]  # (s, a, r, s') of a 1-d state and action: the reward


def run_non_prior(env, **overrides):
    settings = {"env": "cheetah-vel", "eval_episodes": 1, "latent_dim": 1, "non_prior_steps": 600, "non_prior_infer_after": 2}
    args = csro.Args(**{**settings, **overrides})
    agent = StubAgent()
    returns = csro.evaluate_non_prior(agent, [env], args, np.zeros(1, np.float32), np.ones(1, np.float32), "cpu")
    episodes = {}
    for (episode, action), z in zip(env.log, agent.zs):
        episodes.setdefault(episode, []).append((abs(action - 0.3) < 1e-5, z))
    return returns, episodes


def test_non_prior_schedule_worked_example():
    """600 scored steps, horizon 200, z inferred after 2 horizons of scored steps (CSRO's cheetah-vel)."""
    returns, episodes = run_non_prior(EpisodeCountingEnv())
    assert sorted(episodes) == [0, 1, 2, 3, 4, 5] and all(len(e) == 200 for e in episodes.values())
    policy = {k: [p for p, _ in e] for k, e in episodes.items()}
    zs = {k: {z for _, z in e} for k, e in episodes.items()}
    assert not any(policy[0])  # exploration 1: counter 0..199 < 300, all random
    assert all(policy[1]) and zs[1] == {0.0}  # scored 1, z = 0
    assert not any(policy[2][:100]) and all(policy[2][100:])  # exploration 2: counter 200..299 random, then policy
    assert zs[2] == {0.0} and all(policy[3]) and zs[3] == {0.0}  # 200 scored steps < 2 horizons: still z = 0
    # after scored 2 (400 steps), z = mean code of explorations 1 and 2 = mean reward (0 * 200 + 2 * 200) / 400
    assert all(policy[4]) and zs[4] == {1.0} and zs[5] == {1.0}
    assert returns.tolist() == [5.0 * 200]  # the last scored episode's return (reward 5 per step)


def test_non_prior_exploration_spans_early_terminated_episodes():
    returns, episodes = run_non_prior(EpisodeCountingEnv(terminate_after=120), non_prior_steps=240)
    # exploration phase: 120 + 120 steps (a phase lasts at least one horizon), then one 120-step scored episode, twice
    assert sorted(episodes) == list(range(6)) and all(len(e) == 120 for e in episodes.values())
    assert [all(p for p, _ in episodes[k]) for k in (2, 5)] == [True, True]
    # the random counter restarts at the scored-step count in every exploration episode: 0..119 < 120 in both of the
    # first phase (without the restart the second would count 120..239), 120..239 in both of the second
    assert not any(p for k in (0, 1) for p, _ in episodes[k]) and all(p for k in (3, 4) for p, _ in episodes[k])
    assert returns.tolist() == [5.0 * 120]


def test_meta_batch_larger_than_the_training_tasks_is_refused(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "csro.py"), "--meta-batch-size", "11", "--data-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--meta-batch-size 11" in result.stderr and "1 to 10" in result.stderr
    assert not (tmp_path / "runs").exists()
