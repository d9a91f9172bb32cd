import math
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import csro  # noqa: E402
import select_omrl  # noqa: E402
from test_csro import EpisodeCountingEnv, random_context  # noqa: E402
from test_algorithms import resolved  # noqa: E402


def make_agents(**overrides):
    """A SELECT and a CSRO agent built from the same seed (3 training tasks, 2-d states and actions)."""
    settings = {"env": "point-robot", "n_tasks": 6, "n_train": 3}
    select_args = resolved(select_omrl, **settings, **overrides)
    csro_args = resolved(csro, **settings)
    torch.manual_seed(0)
    select = select_omrl.SELECT(obs_dim=2, act_dim=2, args=select_args, device="cpu")
    torch.manual_seed(0)
    reference = csro.CSRO(obs_dim=2, act_dim=2, args=csro_args, device="cpu")
    return select, reference


def random_batch(tasks=3, size=32):
    g = torch.Generator().manual_seed(2)
    batch = {k: torch.randn(tasks, size, d, generator=g) for k, d in
             {"observations": 2, "actions": 2, "rewards": 1, "next_observations": 2}.items()}
    batch["actions"] = batch["actions"].clamp(-0.99, 0.99)
    batch["terminations"] = torch.zeros(tasks, size, 1)
    return batch


def update_both(select, reference, steps=2):
    """The same updates on both agents, each from the same global random state."""
    batch, (context, mask, task_idx) = random_batch(), random_context()
    for _ in range(steps):
        state = torch.get_rng_state()
        select_log = select.update(batch, context, mask, task_idx)
        torch.set_rng_state(state)
        reference_log = reference.update(batch, context, mask, task_idx)
    return select_log, reference_log


def test_bc_weight_hand_made_batch():
    q_data = torch.tensor([[2.0], [-1.0], [0.5], [0.0]])
    value = torch.tensor([[1.0], [0.0], [0.5], [-0.1]])
    # advantages 1, -1, 0, 0.1: imitate the 1st and the 4th; a zero advantage is not > 0
    torch.testing.assert_close(select_omrl.bc_weight(q_data, value), torch.tensor([[1.0], [0.0], [0.0], [1.0]]))


def test_expectile_loss_hand_computed():
    diff = torch.tensor([2.0, -1.0])
    # 0.7 * 4 for the positive difference (V below its target), 0.3 * 1 for the negative one, averaged
    assert select_omrl.expectile_loss(diff, 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 1) / 2)


def test_value_target_is_the_target_critics_at_dataset_actions():
    select, _ = make_agents()
    with torch.no_grad():  # make the online critics differ from their target copies
        for p in [*select.qf1.parameters(), *select.qf2.parameters()]:
            p.add_(0.5)
    batch, z = random_batch(), torch.randn(3, 32, select.args.latent_dim)
    obs, actions = batch["observations"], batch["actions"]
    value = select.value_net(obs, z)
    with torch.no_grad():
        target = torch.min(select.qf1_target(obs, actions, z), select.qf2_target(obs, actions, z))
        online = torch.min(select.qf1(obs, actions, z), select.qf2(obs, actions, z))
        policy = select.actor.act(obs, z)
        at_policy = torch.min(select.qf1_target(obs, policy, z), select.qf2_target(obs, policy, z))
    loss = select.value_loss(obs, actions, z).item()
    assert loss == pytest.approx(((value - target) ** 2).mean().item(), rel=1e-6)
    assert loss != pytest.approx(((value - online) ** 2).mean().item(), rel=1e-3)
    assert loss != pytest.approx(((value - at_policy) ** 2).mean().item(), rel=1e-3)


def test_policy_value_target_is_a_q_filter_without_a_network():
    select, _ = make_agents(value_target="policy")
    assert not hasattr(select, "value_net") and "value_net" not in select.state_dict()
    obs, z = torch.randn(3, 5, 2), torch.randn(3, 5, select.args.latent_dim)
    policy = select.actor.act(obs, z)
    expected = torch.min(select.qf1_target(obs, policy, z), select.qf2_target(obs, policy, z))
    torch.testing.assert_close(select.value(obs, z), expected)


def test_actor_loss_with_every_weight_one_equals_csro():
    select, reference = make_agents()
    select.value = lambda obs, z: torch.full((*obs.shape[:-1], 1), -1e9)  # every advantage positive: w = 1
    select_log, reference_log = update_both(select, reference)
    assert select_log["losses/bc_weight"].item() == 1.0
    for key in ("losses/actor_loss", "losses/bc_loss", "losses/qf1_loss"):
        assert select_log[key].item() == pytest.approx(reference_log[key].item(), rel=1e-5)
    for a, b in zip(select.actor.parameters(), reference.actor.parameters()):
        torch.testing.assert_close(a, b)


def test_actor_loss_with_every_weight_zero_has_no_bc_term():
    select, reference = make_agents()
    select.value = lambda obs, z: torch.full((*obs.shape[:-1], 1), 1e9)  # no advantage positive: w = 0
    select_log, reference_log = update_both(select, reference)
    assert select_log["losses/bc_weight"].item() == 0.0 and select_log["losses/bc_loss"].item() == 0.0
    assert reference_log["losses/bc_loss"].item() > 0
    assert select_log["losses/actor_loss"].item() == pytest.approx(reference_log["losses/actor_loss"].item()
                                                                   - reference_log["losses/bc_loss"].item(), rel=1e-5)


def test_bc_weight_normalization_divides_by_the_imitated_actions_and_the_advantage_spread_is_logged():
    batch, (context, mask, task_idx) = random_batch(), random_context()
    logs, bc = {}, {}
    for normalized in (False, True):
        select, _ = make_agents(bc_weight_normalization=normalized)
        advantages = torch.randn(3, 32, 1, generator=torch.Generator().manual_seed(5))
        # V(s) = Q(s, a_D) - advantage: the advantages, and so the weights, are known
        select.value = lambda obs, z, s=select, a=advantages: torch.min(
            s.qf1(obs, batch["actions"], z), s.qf2(obs, batch["actions"], z)) - a
        torch.manual_seed(1)
        for _ in range(2):  # the actor learns on the first step; the second returns its losses
            logs[normalized] = select.update(batch, context, mask, task_idx)
        bc[normalized] = logs[normalized]["losses/bc_loss"].item()
    weight = (advantages > 0).float()
    share = weight.mean().item()
    assert logs[False]["losses/bc_weight"].item() == pytest.approx(share)
    # the same squared errors summed: the mean over the batch (3 * 32 * 2 entries) or over the imitated ones
    assert bc[True] == pytest.approx(bc[False] * (3 * 32 * 2) / (weight.sum().item() * 2), rel=1e-5)
    assert logs[False]["losses/advantage_std"].item() == pytest.approx(advantages.std().item(), rel=1e-4)


def test_without_weighting_the_agent_is_csro_and_draws_nothing_more():
    select, reference = make_agents(weighted_bc=False)
    assert not hasattr(select, "value_net")
    assert set(select.state_dict()) == set(reference.state_dict())
    after_construction = []
    for agent in (select, reference):
        torch.manual_seed(0)
        type(agent)(obs_dim=2, act_dim=2, args=agent.args, device="cpu")
        after_construction.append(torch.get_rng_state())
    assert torch.equal(*after_construction)
    select_log, reference_log = update_both(select, reference, steps=3)
    assert set(select_log) == set(reference_log)
    for key in reference_log:
        assert torch.equal(select_log[key], reference_log[key]), key
    for name in ("encoder", "club_net", "actor", "qf1", "qf2"):
        for a, b in zip(getattr(select, name).parameters(), getattr(reference, name).parameters()):
            assert torch.equal(a, b), name


def test_weighted_agent_starts_from_csro_networks():
    select, reference = make_agents()  # V is built last: every shared network starts as csro.py's
    for name in ("encoder", "club_net", "actor", "qf1", "qf2"):
        for a, b in zip(getattr(select, name).parameters(), getattr(reference, name).parameters()):
            assert torch.equal(a, b), name


def test_lambda_at_dataset_uses_the_dataset_actions():
    select, reference = make_agents(weighted_bc=False, lambda_at_dataset=True)
    select_log, reference_log = update_both(select, reference, steps=1)
    # the critic steps match; the actor loss differs only through lambda
    assert select_log["losses/qf1_loss"].item() == reference_log["losses/qf1_loss"].item()
    assert select_log["losses/bc_loss"].item() == pytest.approx(reference_log["losses/bc_loss"].item(), rel=1e-6)
    assert select_log["losses/actor_loss"].item() != pytest.approx(reference_log["losses/actor_loss"].item(), rel=1e-4)


def test_proximal_noise_is_clipped_and_actions_stay_in_the_box():
    g = torch.Generator().manual_seed(0)
    action = torch.tensor([-0.9, 0.0, 0.8]).repeat(2000, 1)
    noisy = select_omrl.proximal_action(action, sigma=10.0, noise_clip=0.5, generator=g)
    assert noisy.min() >= -1.0 and noisy.max() <= 1.0
    assert (noisy[:, 1] - action[:, 1]).abs().max() <= 0.5
    assert (noisy[:, 1].abs() == 0.5).float().mean() > 0.9  # sigma 10: nearly every draw is clipped
    assert (noisy[:, 2] == 1.0).any() and (noisy[:, 0] == -1.0).any()  # the outer clip to the action box
    small = select_omrl.proximal_action(torch.zeros(20000, 1), sigma=0.1, noise_clip=0.5, generator=g)
    assert small.std().item() == pytest.approx(0.1, rel=0.05)


class ConstantActor:
    """Deterministic action 0.3 whatever the state; records the z of every call."""

    def __init__(self):
        self.zs = []

    def act(self, obs, z):
        self.zs.append(float(z[0, 0]))
        return torch.full((len(obs), 1), 0.3)


class StubAgent:
    def __init__(self):
        self.actor = ConstantActor()

    def context_codes(self, transitions):
        return transitions[:, 2:3]  # (s, a, r, s') of a 1-d state and action: the reward, here the episode's number


def test_proximal_schedule_worked_example():
    """3 rounds of 200-step episodes: exploration 0, scored 1, exploration 2, scored 3, exploration 4, scored 5."""
    env, agent = EpisodeCountingEnv(), StubAgent()
    args = select_omrl.Args(env="cheetah-vel", eval_episodes=1, latent_dim=1, proximal_episodes=3, proximal_sigma=1.0)
    result = select_omrl.evaluate_proximal(agent, [env], args, np.zeros(1, np.float32), np.ones(1, np.float32), "cpu")
    episodes = {}
    for (episode, action), z in zip(env.log, agent.actor.zs):
        episodes.setdefault(episode, []).append((abs(action - 0.3) < 1e-6, z))
    assert sorted(episodes) == list(range(6)) and all(len(e) == 200 for e in episodes.values())
    for k, steps in episodes.items():
        deterministic = [d for d, _ in steps]
        assert all(deterministic) if k % 2 else not any(deterministic), k  # scored episodes act without noise
    # z is re-inferred after each exploration episode from the exploration episodes only (codes = episode number)
    assert [{z for _, z in episodes[k]} for k in range(6)] == [{0.0}, {0.0}, {0.0}, {1.0}, {1.0}, {2.0}]
    assert result["score"].tolist() == [5.0 * 200]
    assert result["by_episode"].tolist() == [[1.0 * 200, 3.0 * 200, 5.0 * 200]]
    assert result["online"].tolist() == [pytest.approx(sum(range(6)) * 200 / 6)]


def test_proximal_episodes_default_matches_the_non_prior_budget():
    point = resolved(select_omrl, env="point-robot")
    cheetah = resolved(select_omrl, env="cheetah-vel")
    assert (point.proximal_episodes, cheetah.proximal_episodes) == (20, 3)
    assert math.isclose(point.proximal_sigma, 0.1) and point.behavior == "mixed" and point.weighted_bc
