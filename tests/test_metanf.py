import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import metanf  # noqa: E402
from test_algorithms import resolved  # noqa: E402


def make_flow(act_dim, seed=0, cond_dim=3, randomize=0.3):
    torch.manual_seed(seed)
    flow = metanf.FlowActor(obs_dim=cond_dim - 1, act_dim=act_dim, latent_dim=1, hidden_dim=16, n_blocks=3, embedding_dim=4)
    with torch.no_grad():  # move off the identity initialization so every part of the flow is exercised
        for p in flow.parameters():
            p.add_(randomize * torch.randn_like(p))
    return flow.double()


@pytest.mark.parametrize("act_dim", [1, 2, 3])
def test_inverse_of_forward_is_identity(act_dim):
    flow = make_flow(act_dim)
    c = flow.embedding(torch.randn(5, 3, dtype=torch.float64))
    x = torch.randn(5, act_dim, dtype=torch.float64)
    u, log_det = flow.transform(x, c)
    x_back, log_det_inverse = flow.inverse(u, c)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(log_det_inverse, -log_det, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("act_dim", [1, 2, 3])
def test_log_det_matches_autograd_jacobian(act_dim):
    flow = make_flow(act_dim, seed=1)
    c = flow.embedding(torch.randn(1, 3, dtype=torch.float64))
    for _ in range(3):
        x = torch.randn(act_dim, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda v: flow.transform(v[None], c)[0][0], x)
        _, log_det = flow.transform(x[None], c)
        assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-9)


def test_density_integrates_to_one_1d_and_2d():
    obs_z = torch.randn(1, 3, dtype=torch.float64)
    # a milder perturbation than elsewhere: a flow that piles mass up at |a| -> 1 needs a finer grid than a test affords
    flow = make_flow(1, seed=2, randomize=0.1)
    grid = torch.linspace(-1 + 1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)[:, None]
    density = flow.log_prob(obs_z[:, :2].expand(len(grid), 2), obs_z[:, 2:].expand(len(grid), 1), grid).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=0.01)

    flow = make_flow(2, seed=3, randomize=0.1)
    n = 1001
    axis = torch.linspace(-1 + 1e-6, 1 - 1e-6, n, dtype=torch.float64)
    a = torch.cartesian_prod(axis, axis)
    density = flow.log_prob(obs_z[:, :2].expand(len(a), 2), obs_z[:, 2:].expand(len(a), 1), a).exp().reshape(n, n)
    integral = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis).item()
    assert integral == pytest.approx(1.0, abs=0.02)


def test_flow_starts_as_tanh_of_linear_map_and_acts_deterministically():
    flow = make_flow(2, randomize=0.0).float()
    obs, z = torch.randn(4, 2), torch.randn(4, 1)
    torch.testing.assert_close(flow.act(obs, z), flow.act(obs, z))
    assert torch.equal(flow.act(obs, z), torch.zeros(4, 2))  # f(0) = 0 for linear layers and identity couplings
    assert flow.sample(obs, z).abs().max() < 1


def test_flow_fits_a_bimodal_conditional_that_a_gaussian_cannot():
    # condition 1: a = +-(0.6, 0.6), each with probability 1/2; condition -1: a = (0, 0); small noise everywhere.
    # (A 2-D action: with a 1-D action every block is affine in x, so the flow is a conditional Gaussian.)
    torch.manual_seed(0)
    n = 512
    condition = torch.randint(0, 2, (n, 1)).float() * 2 - 1
    sign = torch.randint(0, 2, (n, 1)).float() * 2 - 1
    actions = torch.where(condition > 0, 0.6 * sign, torch.zeros_like(sign)).expand(n, 2) + 0.05 * torch.randn(n, 2)
    obs, z = torch.cat([condition, torch.zeros_like(condition)], -1), torch.zeros(n, 1)
    flow = metanf.FlowActor(2, 2, 1, 32, 4, 8)
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-3)
    first = -flow.log_prob(obs, z, actions).mean().item()
    for _ in range(400):
        loss = -flow.log_prob(obs, z, actions).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    nll = -flow.log_prob(obs, z, actions).mean().item()
    # the best Gaussian per condition (full covariance, maximum likelihood, in pre-tanh space; same tanh correction)
    u = torch.atanh(actions.clamp(-1 + 1e-5, 1 - 1e-5)).double()
    gaussian = 0.0
    for value in (-1.0, 1.0):
        rows = condition[:, 0] == value
        uc = u[rows]
        covariance = torch.cov(uc.T, correction=0)
        log_p = torch.distributions.MultivariateNormal(uc.mean(0), covariance).log_prob(uc)
        gaussian += -(log_p - torch.log(1 - actions[rows].double() ** 2 + 1e-6).sum(-1)).sum().item()
    gaussian /= n
    assert nll < first - 1.0
    assert nll < gaussian - 0.3, (nll, gaussian)


class PrototypeDecoder:
    """nll(z, transition) = mean over dims of (z - reward)^2: the code equal to the rewards reconstructs them best."""

    def nll(self, z, context):
        shape = torch.broadcast_shapes(z.shape[:-1], context["rewards"].shape[:-1])
        return ((z.expand(*shape, -1) - context["rewards"].expand(*shape, -1)) ** 2).mean(-1)


def full_selection(decoder, codes, context, t):
    """The definition, recomputed from scratch: argmin_j mean_i nll(z_j, transition_i), i, j <= t."""
    scores = decoder.nll(codes[:, :t, None], {k: v[:, None, :t] for k, v in context.items()}).mean(-1)
    return scores.argmin(1)


def test_selection_picks_the_candidate_that_reconstructs_the_context():
    torch.manual_seed(0)
    n, horizon = 3, 12
    rewards = torch.full((n, horizon, 1), 0.5)
    context = {"observations": torch.zeros(n, horizon, 2), "actions": torch.zeros(n, horizon, 1),
               "next_observations": torch.zeros(n, horizon, 2), "rewards": rewards}
    codes = torch.randn(n, horizon, 1)
    codes[0, 7] = 0.5  # task 0: transition 7's code reconstructs every reward exactly
    codes[1, 2] = 0.5  # task 1: transition 2's code does
    selector = metanf.RepresentationSelector(PrototypeDecoder(), n, horizon, 1, "cpu")
    for t in range(horizon):
        selector.add({k: v[:, t] for k, v in context.items()}, codes[:, t])
        best = full_selection(PrototypeDecoder(), codes, context, t + 1)
        torch.testing.assert_close(selector.z, codes[torch.arange(n), best])
        seen = {k: v[:, None, : t + 1] for k, v in context.items()}
        expected = PrototypeDecoder().nll(codes[:, : t + 1, None], seen).mean(-1)
        torch.testing.assert_close(selector.score_sum[:, : t + 1] / (t + 1), expected)
    assert selector.z[0].item() == 0.5 and selector.z[1].item() == 0.5
    assert selector.score_sum[0].argmin().item() == 7 and selector.score_sum[1].argmin().item() == 2
    selector.reset()
    assert selector.t == 0 and selector.z.abs().sum() == 0


def test_selection_with_the_real_decoder_matches_the_definition():
    torch.manual_seed(1)
    n, horizon, obs_dim, act_dim, latent = 2, 9, 3, 2, 4
    decoder = metanf.Decoder(obs_dim, act_dim, latent, 16)
    context = {"observations": torch.randn(n, horizon, obs_dim), "actions": torch.rand(n, horizon, act_dim) * 2 - 1,
               "next_observations": torch.randn(n, horizon, obs_dim), "rewards": torch.randn(n, horizon, 1)}
    codes = torch.tanh(torch.randn(n, horizon, latent))
    selector = metanf.RepresentationSelector(decoder, n, horizon, latent, "cpu")
    for t in range(horizon):
        selector.add({k: v[:, t] for k, v in context.items()}, codes[:, t])
        best = full_selection(decoder, codes, context, t + 1)
        torch.testing.assert_close(selector.z, codes[torch.arange(n), best])


def test_defaults_fill_per_env_values():
    args = resolved(metanf, env="hopper-params")
    assert (args.latent_dim, args.hidden_dim, args.beta, args.gamma, args.context_size) == (10, 256, 1.5, 0.99, 200)
    args = resolved(metanf, env="point-robot")
    assert (args.latent_dim, args.hidden_dim, args.beta, args.gamma, args.context_size) == (5, 64, 1.0, 0.9, 20)
    assert np.isclose(resolved(metanf, env="cheetah-vel", beta=0.0).beta, 0.0)
    # the acting rule: the development study's winner for the flow, TD3+BC's tanh(mean) for the Gaussian actor
    assert resolved(metanf).act == "sample"
    assert resolved(metanf, flow=False).act == "zero"


def make_agent(flow=True, **overrides):
    args = resolved(metanf, env="point-robot", flow=flow, **overrides)
    torch.manual_seed(0)
    agent = metanf.MetaNF(obs_dim=2, act_dim=2, args=args, device="cpu")
    with torch.no_grad():  # a non-trivial flow (unsaturated actions) and critics
        for scale, net in ((0.05, agent.actor), (0.3, agent.qf1), (0.3, agent.qf2)):
            for p in net.parameters():
                p.add_(scale * torch.randn_like(p))
    return agent


@pytest.mark.parametrize("flow", [True, False])
def test_sampled_evaluation_actions_are_seeded_and_reproducible(flow):
    agent = make_agent(flow, act="sample")
    obs, z = torch.randn(6, 2), torch.randn(6, 5)
    first = agent.evaluation_action(obs, z, torch.Generator().manual_seed(3))
    again = agent.evaluation_action(obs, z, torch.Generator().manual_seed(3))
    other = agent.evaluation_action(obs, z, torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other) and not torch.allclose(first, agent.actor.act(obs, z))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, agent.action_from_latent(obs, z, x))  # the action of the generator's latent
    agent.args.act = "zero"
    zero_latent = agent.action_from_latent(obs, z, torch.zeros(6, 2))
    torch.testing.assert_close(agent.evaluation_action(obs, z, None), zero_latent)


@pytest.mark.parametrize("flow", [True, False])
def test_best_of_n_never_picks_a_lower_q_than_the_zero_latent(flow):
    agent = make_agent(flow, act="best-of-n", act_samples=8)
    obs, z = torch.randn(200, 2), torch.randn(200, 5)
    chosen = agent.evaluation_action(obs, z, torch.Generator().manual_seed(0))
    zero = agent.actor.act(obs, z)

    def min_q(actions):
        return torch.min(agent.qf1(obs, actions, z), agent.qf2(obs, actions, z))

    with torch.no_grad():
        assert (min_q(chosen) >= min_q(zero) - 1e-6).all()
        assert (min_q(chosen) > min_q(zero) + 1e-6).any()  # and it does improve somewhere
        draws = torch.randn(8, 200, 2, generator=torch.Generator().manual_seed(0))
        best_draw = torch.stack([min_q(agent.action_from_latent(obs, z, x)) for x in draws]).max(0).values
        torch.testing.assert_close(min_q(chosen), torch.maximum(best_draw, min_q(zero)))


def test_actor_diagnostics_measure_each_terms_pull_without_touching_training():
    torch.manual_seed(0)
    batch = {"observations": torch.randn(3, 8, 2), "actions": torch.rand(3, 8, 2) * 2 - 1, "rewards": torch.randn(3, 8, 1),
             "next_observations": torch.randn(3, 8, 2), "terminations": torch.zeros(3, 8, 1)}
    context, mask = dict(batch), torch.ones(3, 8, 1)
    for flow in (True, False):
        agent = make_agent(flow=flow)
        before = torch.get_rng_state()
        logs = agent.actor_diagnostics(batch, context, mask, step=7)
        assert torch.equal(torch.get_rng_state(), before)  # training's random stream is untouched
        assert all(p.grad is None for p in agent.actor.parameters())  # and no gradient is left behind
        assert logs["diagnostics/actor_grad_norm_q"] > 0 and logs["diagnostics/actor_grad_norm_bc"] > 0
        # by hand: the BC term's gradient at the same z and latent, and the squared distance of that action
        z = metanf.masked_mean(agent.context_codes(metanf.transition_inputs(context)), mask)[:, None].expand(-1, 8, -1)
        x = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(7))
        pi = agent.action_from_latent(batch["observations"], z, x)
        bc = (-agent.actor.log_prob(batch["observations"], z, batch["actions"]).mean() if flow
              else ((pi - batch["actions"]) ** 2).mean())
        grads = torch.autograd.grad(bc, list(agent.actor.parameters()), allow_unused=True)
        norm = torch.sqrt(sum((g**2).sum() for g in grads if g is not None))
        torch.testing.assert_close(logs["diagnostics/actor_grad_norm_bc"], norm)
        distance = ((pi - batch["actions"]) ** 2).sum(-1).mean()
        torch.testing.assert_close(logs["diagnostics/action_sq_distance"], distance.detach())
    # the weights scale the terms: no Q term with alpha = 0, no BC term with bc_weight = 0
    assert make_agent(alpha=0.0).actor_diagnostics(batch, context, mask, 1)["diagnostics/actor_grad_norm_q"] == 0
    assert make_agent(bc_weight=0.0).actor_diagnostics(batch, context, mask, 1)["diagnostics/actor_grad_norm_bc"] == 0


def test_the_options_the_first_study_rejected_are_gone():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "metanf.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--bc-weight" in result.stdout
    for option in ("--q-latent", "--target-latent", "--bc-nll-reduction", "--nll-clamp"):
        assert option not in result.stdout


def test_nll_clamp_bounds_the_tanh_term_of_saturated_dataset_actions():
    flow = make_flow(2).float()
    obs, z, saturated = torch.zeros(1, 2), torch.zeros(1, 1), torch.ones(1, 2)
    tight, loose = flow.log_prob(obs, z, saturated, 1e-5), flow.log_prob(obs, z, saturated, 1e-2)
    assert torch.isfinite(tight).all() and (tight.abs() > loose.abs()).all()
