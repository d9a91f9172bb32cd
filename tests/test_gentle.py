import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import gentle  # noqa: E402
from test_csro import EpisodeCountingEnv  # noqa: E402
from test_algorithms import resolved  # noqa: E402


def gentle_args(**overrides):
    settings = {"env": "point-robot", "n_tasks": 6, "n_train": 3, "ensemble_hidden_dim": 32, "relabel_states": 64}
    return resolved(gentle, **{**settings, **overrides})


def linear_sampler(sizes=(400, 300), seed=0):
    """A stand-in for common.datasets.TaskBatchSampler whose tasks follow known linear dynamics: task k has
    r = w_k . [s, a] and s' - s = A_k [s, a], with 2-d states and 1-d actions."""
    g = torch.Generator().manual_seed(seed)
    n_max = max(sizes)
    w = torch.randn(len(sizes), 3, 1, generator=g)
    a = 0.1 * torch.randn(len(sizes), 3, 2, generator=g)
    obs = torch.randn(len(sizes), n_max, 2, generator=g)
    actions = torch.rand(len(sizes), n_max, 1, generator=g) * 2 - 1
    x = torch.cat([obs, actions], -1)
    sampler = SimpleNamespace(task_ids=list(range(len(sizes))), device=torch.device("cpu"), sizes=torch.tensor(sizes),
                              observations=obs, actions=actions, rewards=x @ w, next_observations=obs + x @ a)
    return sampler, w, a


def test_decoder_targets_and_tae_loss_hand_computed():
    context = {"observations": torch.tensor([[[1.0], [2.0]]]), "actions": torch.tensor([[[0.5], [-0.5]]]),
               "rewards": torch.tensor([[[3.0], [-1.0]]]), "next_observations": torch.tensor([[[1.5], [0.0]]])}
    torch.testing.assert_close(gentle.dynamics_targets(context, True), torch.tensor([[[3.0, 0.5], [-1.0, -2.0]]]))
    torch.testing.assert_close(gentle.dynamics_targets(context, False), torch.tensor([[[3.0], [-1.0]]]))  # r alone
    decoder = gentle.Decoder(obs_dim=1, act_dim=1, latent_dim=2, hidden_dim=4, next_obs_in_context=True)
    with torch.no_grad():
        for p in decoder.parameters():
            p.zero_()
        decoder.net[-1].bias.copy_(torch.tensor([1.0, 0.0]))  # predicts (1, 0) whatever its input
    # ((3-1)^2 + 0.5^2 + (-1-1)^2 + (-2)^2) / 4
    loss = gentle.tae_loss(decoder, context, torch.zeros(1, 2), True)
    assert loss.item() == pytest.approx((4 + 0.25 + 4 + 4) / 4)
    decoder = gentle.Decoder(obs_dim=1, act_dim=1, latent_dim=2, hidden_dim=4, next_obs_in_context=False)
    with torch.no_grad():
        for p in decoder.parameters():
            p.zero_()
        decoder.net[-1].bias.fill_(1.0)  # predicts r = 1
    assert gentle.tae_loss(decoder, context, torch.zeros(1, 2), False).item() == pytest.approx(((3 - 1) ** 2 + 2**2) / 2)


@pytest.mark.parametrize("env, outputs", [("point-robot", 1), ("cheetah-vel", 1), ("ant-dir", 1), ("humanoid-dir", 1),
                                          ("hopper-params", 3), ("walker-params", 3)])
def test_the_reward_families_reconstruct_r_and_the_dynamics_families_r_and_the_state_change(env, outputs):
    """GENTLE's use_next_obs_in_context: the reward's weight in the encoder's loss is recon_weight (10) where r is
    reconstructed alone, and recon_weight / (1 + obs_dim) per output where (r, s' - s) are (here obs_dim = 2)."""
    args = resolved(gentle, env=env, n_tasks=6, n_train=3, encoder_hidden_dim=8, hidden_dim=8,
                                                 latent_dim=2)
    agent = gentle.GENTLE(obs_dim=2, act_dim=1, args=args, device="cpu")
    assert agent.encoder.net[0].in_features == 2 + 1 + 1 + (2 if outputs == 3 else 0)  # (s, a, r) or (s, a, r, s')
    assert agent.decoder.net[-1].out_features == outputs
    context = {"observations": torch.randn(3, 4, 2), "actions": torch.randn(3, 4, 1), "rewards": torch.randn(3, 4, 1),
               "next_observations": torch.randn(3, 4, 2)}
    with torch.no_grad():
        for p in agent.decoder.parameters():
            p.zero_()  # the decoder predicts 0: the loss is the targets' mean square
        loss, _, log = agent.representation_loss(context, torch.ones(3, 4, 1), torch.arange(3))
    reward_term = (context["rewards"] ** 2).sum()
    state_term = ((context["next_observations"] - context["observations"]) ** 2).sum() if outputs == 3 else 0.0
    expected = 10 * (reward_term + state_term) / (3 * 4 * outputs)
    torch.testing.assert_close(loss, torch.as_tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(log["losses/tae_loss"] * 10, loss)
    ensemble = gentle.DynamicsEnsemble(3, 2, 1, args, torch.Generator().manual_seed(0), "cpu")
    assert ensemble(torch.zeros(3, args.ensemble_size, 5, 3)).shape[-1] == outputs
    assert len(ensemble.weights) == (4 if outputs == 3 else 3)  # GENTLE: 2 hidden layers, 3 where s' is predicted


def test_decoder_reads_the_task_code():
    decoder = gentle.Decoder(obs_dim=1, act_dim=1, latent_dim=1, hidden_dim=4, next_obs_in_context=True)
    with torch.no_grad():
        for p in decoder.parameters():
            p.zero_()
        decoder.net[0].weight[0, 2] = 1.0  # the first hidden unit copies z
        decoder.net[2].weight[0, 0] = decoder.net[4].weight[0, 0] = decoder.net[6].weight[0, 0] = 1.0
    context = {k: torch.zeros(2, 3, 1) for k in ("observations", "actions", "rewards", "next_observations")}
    # task 0 has z = 2, task 1 z = 0: the predicted reward is each task's z, its target 0
    loss = gentle.tae_loss(decoder, context, torch.tensor([[2.0], [0.0]]), True)
    assert loss.item() == pytest.approx((3 * 4 + 3 * 0) / 12)


def test_dynamics_ensembles_fit_known_linear_systems(capsys):
    sampler, w, a = linear_sampler()
    args = gentle_args(env="hopper-params", ensemble_max_epochs=150, ensemble_patience=20, ensemble_batch_size=128)
    ensemble = gentle.DynamicsEnsemble(2, 2, 1, args, torch.Generator().manual_seed(0), "cpu")
    holdout_error, epochs = gentle.fit_dynamics(ensemble, sampler, args, torch.Generator().manual_seed(1))
    assert holdout_error.shape == (2, args.ensemble_size) and epochs >= 2
    x = torch.cat([torch.randn(2, 100, 2), torch.rand(2, 100, 1) * 2 - 1], -1)  # new points of the same range
    truth = torch.cat([x @ w, x @ a], -1)
    with torch.no_grad():
        prediction = ensemble(x[:, None]).mean(1)
        swapped = ensemble(x[:, None], torch.tensor([1, 0])).mean(1)
    error, scale = ((prediction - truth) ** 2).mean().item(), (truth**2).mean().item()
    assert error < 0.01 * scale, (error, scale)
    assert ((swapped - truth) ** 2).mean().item() > 10 * error  # each task has its own ensemble
    assert holdout_error.max().item() < 0.01 * scale
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dynamics ensembles: epoch")]
    assert progress and progress[0].startswith("dynamics ensembles: epoch 10 (at most 150), ")  # every 10 epochs


def test_each_run_seed_fits_its_own_ensembles_and_one_seed_the_same(tmp_path):
    sampler, _, _ = linear_sampler()
    fits = {}
    for name, seed in (("seed 0", 0), ("seed 1", 1), ("seed 0 again", 0)):
        args = gentle_args(seed=seed, ensemble_max_epochs=2, data_dir=str(tmp_path / name.replace(" ", "_")))
        assert args.dynamics_seed == seed  # by default the run's seed
        ensemble, _ = gentle.load_or_fit_dynamics(sampler, 2, 1, args, "cpu")
        fits[name] = torch.cat([p.flatten() for p in ensemble.parameters()])
    assert not torch.equal(fits["seed 0"], fits["seed 1"])
    assert torch.equal(fits["seed 0"], fits["seed 0 again"])  # fitted anew in another folder: the same ensembles
    # in one folder the two seeds' fits are kept apart (the cache key holds the seed)
    for seed in (0, 1):
        gentle.load_or_fit_dynamics(sampler, 2, 1, gentle_args(seed=seed, ensemble_max_epochs=2, data_dir=str(tmp_path)), "cpu")
    assert len(list((tmp_path / "point-robot" / "expert" / "dynamics").iterdir())) == 2


def test_dynamics_fitting_draws_nothing_from_the_global_stream(tmp_path, capsys):
    sampler, _, _ = linear_sampler()
    args = gentle_args(ensemble_max_epochs=3, data_dir=str(tmp_path))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fitted, info = gentle.load_or_fit_dynamics(sampler, 2, 1, args, "cpu")
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "hold-out MSE per task" in line]
    errors = line.split("hold-out MSE per task ")[1].split(";")[0].split(", ")
    assert len(errors) == 2 and all(float(e) == float(f"{float(e):.3g}") for e in errors)  # 3 significant digits
    assert torch.equal(before, torch.get_rng_state())
    (path,) = (tmp_path / "point-robot" / "expert" / "dynamics").iterdir()
    loaded, saved = gentle.load_or_fit_dynamics(sampler, 2, 1, args, "cpu")  # the second run of a grid loads the fit
    assert torch.equal(before, torch.get_rng_state()) and saved["epochs"] == info["epochs"] == 3
    for p, q in zip(fitted.parameters(), loaded.parameters()):
        assert torch.equal(p, q)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="remove the file to fit them again"):
        gentle.load_or_fit_dynamics(sampler, 2, 1, args, "cpu")


@pytest.mark.parametrize("env", ["point-robot", "hopper-params"])
def test_relabelled_transitions_carry_their_ensembles_labels(env):
    args = gentle_args(env=env, relabel_states=16, negative_tasks=2)
    sizes = (50, 60, 70, 80)
    sampler, _, _ = linear_sampler(sizes)
    torch.manual_seed(0)
    agent = gentle.GENTLE(obs_dim=2, act_dim=1, args=args, device="cpu")
    agent.ensemble = gentle.DynamicsEnsemble(4, 2, 1, args, torch.Generator().manual_seed(0), "cpu")
    sampler.sample = lambda task_idx, n: {k: getattr(sampler, k)[task_idx[:, None], torch.arange(n)] for k in
                                          ("observations", "actions", "rewards", "next_observations")}
    agent.relabel(sampler)
    labellers = agent.pseudo["labellers"].view(4, 3)
    assert torch.equal(labellers[:, 0], torch.arange(4))  # a task's own ensemble labels its states
    for i in range(4):
        negatives = labellers[i, 1:].tolist()
        assert len(set(negatives)) == 2 and i not in negatives  # distinct other tasks
    counts = torch.bincount(labellers.flatten(), minlength=4)
    assert torch.equal(agent.pseudo["sizes"], counts * 16)
    for j in range(4):
        size = int(agent.pseudo["sizes"][j])
        obs, actions = agent.pseudo["observations"][j, :size], agent.pseudo["actions"][j, :size]
        with torch.no_grad():
            label = agent.ensemble(torch.cat([obs, actions], -1)[None, None], torch.tensor([j])).mean(1)[0]
        torch.testing.assert_close(agent.pseudo["rewards"][j, :size], label[:, :1])
        if env == "hopper-params":  # s' is labelled only where it is in the context
            torch.testing.assert_close(agent.pseudo["next_observations"][j, :size] - obs, label[:, 1:], atol=1e-5, rtol=1e-5)
        else:
            assert label.shape[-1] == 1 and agent.pseudo["next_observations"][j, :size].isnan().all()
        # the states come from the tasks that j labelled for: its own and those that drew it as a negative
        sources = {i for i in range(4) if j in labellers[i].tolist()}
        own_states = {tuple(sampler.observations[i, k].tolist()) for i in sources for k in range(16)}
        assert {tuple(s.tolist()) for s in obs} == own_states
    # a task's own states are labelled with actions of the target policy under that task's code
    z = agent.context_codes(gentle.transition_inputs(sampler.sample(torch.arange(4), 16))).mean(1)
    expected = agent.actor_target.act(sampler.observations[:1, :16], z[:1, None].expand(-1, 16, -1))[0]
    rows = [k for k in range(int(agent.pseudo["sizes"][0])) if tuple(agent.pseudo["observations"][0, k].tolist())
            == tuple(sampler.observations[0, 0].tolist())]
    torch.testing.assert_close(agent.pseudo["actions"][0, rows[0]], expected[0])


def test_training_context_mixes_real_and_pseudo_transitions_and_without_them_draws_only_the_real_one():
    args = gentle_args(context_size=20, pseudo_fraction=0.75)
    agent = gentle.GENTLE(obs_dim=2, act_dim=1, args=args, device="cpu")
    real = {k: torch.zeros(3, 5, d) for k, d in (("observations", 2), ("actions", 1), ("rewards", 1),
                                                   ("next_observations", 2), ("terminations", 1))}
    calls = []
    sampler = SimpleNamespace(device=torch.device("cpu"),
                              sample_context=lambda idx, n: (calls.append(n) or ({k: v[: len(idx), :n] for k, v in real.items()},
                                                                                  torch.ones(len(idx), n, 1))))
    torch.manual_seed(0)
    agent.sample_context(sampler, torch.arange(3))
    assert calls == [20] and torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())
    agent.pseudo = {k: torch.ones(3, 8, v.shape[-1]) for k, v in real.items() if k != "terminations"}
    agent.pseudo["sizes"] = torch.tensor([8, 4, 2])
    context, mask = agent.sample_context(sampler, torch.tensor([2, 0]))
    assert calls == [20, 5] and mask.shape == (2, 20, 1)  # 20 - int(0.75 * 20) real transitions
    assert (context["observations"][:, :5] == 0).all() and (context["observations"][:, 5:] == 1).all()


class StubActor:
    """Policy mean atanh(0.3), std 1, so deterministic actions are 0.3 and samples are not; records every z."""

    def __init__(self):
        self.zs = []

    def __call__(self, obs, z):
        self.zs.append(float(z[0, 0]))
        return torch.full((len(obs), 1), math.atanh(0.3)), torch.zeros(len(obs), 1)

    def act(self, obs, z):
        return torch.tanh(self(obs, z)[0])


class StubAgent:
    def __init__(self):
        self.actor = StubActor()

    def context_codes(self, transitions):
        return transitions[:, 2:3]  # (s, a, r, s') of a 1-d state and action: the reward, here the episode's number


def test_one_shot_protocol_worked_example():
    """Horizon 200, episodes that terminate after 150 steps: 200 collected transitions (150 of episode 0, 50 of 1),
    then scored episodes 2, 3, 4, 5 (4 x 150 = 600 scored steps), each after 200 more resampled transitions."""
    env, agent = EpisodeCountingEnv(terminate_after=150), StubAgent()
    args = gentle.Args(env="cheetah-vel", eval_episodes=1, latent_dim=1, one_shot_samples=200, one_shot_steps=600, seed=3)
    returns = gentle.evaluate_one_shot(agent, [env], args, np.zeros(1, np.float32), np.ones(1, np.float32), "cpu")
    episodes = {}
    for (episode, action), z in zip(env.log, agent.actor.zs):
        episodes.setdefault(episode, []).append((abs(action - 0.3) < 1e-6, z))
    assert {k: len(v) for k, v in episodes.items()} == {0: 150, 1: 50, 2: 150, 3: 150, 4: 150, 5: 150}
    assert not any(d for k in (0, 1) for d, _ in episodes[k]) and {z for k in (0, 1) for _, z in episodes[k]} == {0.0}
    assert all(d for k in (2, 3, 4, 5) for d, _ in episodes[k])  # scored episodes are deterministic
    # z: the mean code of the growing resampled context; codes are 0 (episode 0) and 1 (episode 1) -> the share of
    # resampled indices >= 150, drawn after the 200 policy-noise draws of the collection
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        torch.randn((1, 1), generator=g)
    drawn = torch.cat([torch.randint(200, (1, 200), generator=g) for _ in range(4)], 1)
    expected = [(drawn[0, : 200 * (k + 1)] >= 150).float().mean().item() for k in range(4)]
    assert [episodes[k][0][1] for k in (2, 3, 4, 5)] == pytest.approx(expected)
    assert returns.tolist() == [pytest.approx(150 * (2 + 3 + 4 + 5) / 4)]  # the mean over scored episodes


def test_defaults_follow_gentle_configs():
    point, cheetah_dir = gentle_args(), resolved(gentle, env="cheetah-dir")
    assert (point.context_size, point.encoder_hidden_dim, point.one_shot_samples, point.negative_tasks) == (256, 64, 20, 3)
    assert (cheetah_dir.negative_tasks, cheetah_dir.meta_batch_size, cheetah_dir.one_shot_samples) == (1, 2, 200)
    assert point.pseudo_transitions and point.behavior == "expert"
