import gymnasium as gym
import mujoco
import numpy as np
import pytest

from common.envs import ENV_NAMES, GYM_IDS, HORIZONS, get_tasks, make_env, train_test_split

DIMS = {
    "point-robot": (2, 2),
    "cheetah-vel": (20, 6),
    "cheetah-dir": (20, 6),
    "ant-dir": (27, 8),
    "humanoid-dir": (376, 17),
    "hopper-params": (11, 3),
    "walker-params": (17, 6),
}


def random_actions(n, dim, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_spaces_and_horizon(name):
    env = make_env(name, 1)
    obs_dim, act_dim = DIMS[name]
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (obs_dim,)
    assert env.action_space.shape == (act_dim,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert env.spec.max_episode_steps == HORIZONS[name] == (20 if name == "point-robot" else 200)
    assert env.unwrapped.task == get_tasks(name)[1]


@pytest.mark.parametrize("name", ["point-robot", "cheetah-vel", "cheetah-dir"])
def test_never_terminates_and_truncates_at_horizon(name):
    env = make_env(name, 0)
    env.reset(seed=0)
    flags = [env.step(np.zeros(env.action_space.shape, np.float32))[2:4] for _ in range(HORIZONS[name])]
    assert not any(t for t, _ in flags)
    assert [tr for _, tr in flags] == [False] * (HORIZONS[name] - 1) + [True]


def test_hopper_falls_with_terminated_not_truncated():
    env = make_env("hopper-params", 0)
    env.reset(seed=0)
    for t, action in enumerate(random_actions(200, 3)):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated:
            break
    assert terminated and not truncated and t < 199


# Rewards recomputed from the simulator state before and after a step, with the formulas of envs.md.
def point_robot_reward(env, before, action):
    state = before + np.clip(0.1 * action.astype(np.float64), -0.1, 0.1)
    return -np.linalg.norm(state - np.array(env.task["goal"])), False


def cheetah_reward(env, before, action):
    v = (env.data.qpos[0] - before["qpos"][0]) / 0.05
    forward = -abs(v - env.task["velocity"]) if "velocity" in env.task else env.task["direction"] * v
    return forward - 0.05 * np.sum(np.clip(action.astype(np.float64), -1, 1) ** 2), False


def ant_reward(env, before, action):
    u = np.array([np.cos(env.task["direction"]), np.sin(env.task["direction"])])
    v = (env.data.xpos[1, :2] - before["xpos"][1, :2]) / 0.05  # body 1 is the torso
    contact = env.contact_cost_weight * np.sum(np.clip(env.data.cfrc_ext, -1, 1) ** 2)
    z = env.data.qpos[2]
    return v @ u - 0.5 * np.sum(np.clip(action.astype(np.float64), -1, 1) ** 2) - contact + 1.0, not (0.2 <= z <= 1.0)


def humanoid_reward(env, before, action):
    u = np.array([np.cos(env.task["direction"]), np.sin(env.task["direction"])])
    mass = env.model.body_mass[:, None]
    com_before = (mass * before["xipos"]).sum(0)[:2] / mass.sum()
    com_after = (mass * env.data.xipos).sum(0)[:2] / mass.sum()
    ctrl = np.clip(0.4 * action.astype(np.float64), -0.4, 0.4)
    contact = min(env.contact_cost_weight * np.sum(env.data.cfrc_ext**2), 10.0)
    z = env.data.qpos[2]
    reward = 0.25 * (com_after - com_before) @ u / 0.003 - 0.1 * np.sum(ctrl**2) - contact + 5.0
    return reward, bool(z < 1.0 or z > 2.0)


def rand_params_reward(env, before, action):
    qpos = env.data.qpos
    reward = (qpos[0] - before["qpos"][0]) / 0.016 + 1.0 - 1e-3 * np.sum(np.clip(action.astype(np.float64), -1, 1) ** 2)
    if env.robot == "hopper":
        state = np.concatenate([qpos, env.data.qvel])
        healthy = np.isfinite(state).all() and (np.abs(state[2:]) < 100).all() and qpos[1] > 0.7 and abs(qpos[2]) < 0.2
    else:
        healthy = 0.8 < qpos[1] < 2.0 and -1.0 < qpos[2] < 1.0
    return reward, not healthy


REWARDS = {
    "point-robot": point_robot_reward,
    "cheetah-vel": cheetah_reward,
    "cheetah-dir": cheetah_reward,
    "ant-dir": ant_reward,
    "humanoid-dir": humanoid_reward,
    "hopper-params": rand_params_reward,
    "walker-params": rand_params_reward,
}


@pytest.mark.parametrize("name", ENV_NAMES)
def test_reward_and_termination_match_formula(name):
    # ant and humanoid with a non-zero contact weight, so that term is checked too
    kwargs = {"contact_cost_weight": 5e-4} if name == "ant-dir" else {}
    env = make_env(name, 3 % len(get_tasks(name)), **kwargs)
    env.reset(seed=1)
    raw = env.unwrapped
    checked_contact = False
    # 1.5 x: beyond [-1, 1], so the clipping is tested
    for action in random_actions(HORIZONS[name] - 1, env.action_space.shape[0], seed=2) * 1.5:
        if name == "point-robot":
            before = raw._state.copy()
        else:
            before = {k: getattr(raw.data, k).copy() for k in ("qpos", "xpos", "xipos")}
        _, reward, terminated, truncated, _ = env.step(action)
        expected, expected_terminated = REWARDS[name](raw, before, action)
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert terminated == expected_terminated and not truncated
        if name in ("ant-dir", "humanoid-dir"):
            checked_contact |= np.abs(raw.data.cfrc_ext).sum() > 0
        if terminated:
            break
    if name in ("ant-dir", "humanoid-dir"):
        assert checked_contact, "contact forces never non-zero: the contact term was not exercised"


def test_ant_terminates_when_torso_leaves_height_range():
    env = make_env("ant-dir", 0)
    env.reset(seed=0)
    raw = env.unwrapped
    qpos = raw.data.qpos.copy()
    qpos[2] = 1.5
    raw.set_state(qpos, raw.data.qvel.copy())
    _, reward, terminated, truncated, info = env.step(np.zeros(8, np.float32))
    assert terminated and not truncated
    assert reward == pytest.approx(info["reward_forward"] + info["reward_ctrl"] + 1.0)  # bonus on the last step too


def test_cheetah_observation_contents():
    raw = make_env("cheetah-vel", 0).unwrapped
    obs, _ = raw.reset(seed=0)
    np.testing.assert_array_equal(obs, np.concatenate([raw.data.qpos[1:], raw.data.qvel, raw.data.body("torso").xpos]))


@pytest.mark.parametrize("name", ["hopper-params", "walker-params"])
def test_rand_params_model_arrays(name):
    xml = {"hopper-params": "hopper.xml", "walker-params": "walker2d.xml"}[name]
    env = make_env(name, 0)
    raw = env.unwrapped
    assert raw.dt == pytest.approx(0.016) and raw.frame_skip == 4
    fresh = mujoco.MjModel.from_xml_path(raw.fullpath)
    assert raw.fullpath.endswith("/" + xml)
    tasks = get_tasks(name)
    for task in (tasks[0], tasks[5]):
        raw.set_task(task)  # from task 0 to task 5: the defaults are restored before multiplying
        for field in ("body_mass", "body_inertia", "dof_damping", "geom_friction"):
            np.testing.assert_allclose(getattr(raw.model, field), getattr(fresh, field) * np.array(task[field]), rtol=1e-12)
    # draw order per task: mass, inertia, damping, friction, one uniform(-3, 3) per element
    rng = np.random.RandomState(1337)
    for task in tasks[:2]:
        for field, base in (("body_mass", 1.5), ("body_inertia", 1.5), ("dof_damping", 1.3), ("geom_friction", 1.5)):
            expected = base ** rng.uniform(-3, 3, size=getattr(fresh, field).shape)
            np.testing.assert_allclose(task[field], expected, rtol=1e-12)


def test_task_sets_match_reference_values():
    # GENTLE's task sets (envs.md §2, §3, §5, §7)
    goals = [t["goal"] for t in get_tasks("point-robot")[:3]]
    np.testing.assert_allclose(goals, [[-0.476, -0.683], [-0.444, -0.081], [-0.358, 0.037]], atol=5e-4)
    velocities = [t["velocity"] for t in get_tasks("cheetah-vel")]
    expected_velocities = [1.572, 0.952, 1.669, 2.756, 1.926, 3.110, 1.572, 5.857, 4.397, 0.692]
    expected_velocities += [2.318, 3.771, 0.750, 5.901, 2.659, 4.737, 4.765, 2.168, 2.497, 3.506]
    np.testing.assert_allclose(velocities, expected_velocities, atol=5e-4)
    directions = [t["direction"] for t in get_tasks("ant-dir")]
    expected_directions = [1.646, 0.997, 1.748, 2.886, 2.017, 3.257, 1.646, 6.133, 4.604, 0.724]
    np.testing.assert_allclose(directions[:10], expected_directions, atol=5e-4)
    assert [t["direction"] for t in get_tasks("humanoid-dir")] == directions
    hopper = get_tasks("hopper-params")[0]
    np.testing.assert_allclose(hopper["body_mass"], [0.5605, 0.4359, 0.5829, 0.9058, 0.6470], atol=5e-5)
    np.testing.assert_allclose(hopper["dof_damping"], [1.5062, 0.6117, 0.7164, 1.3073, 0.9994, 0.6029], atol=5e-5)
    csro = get_tasks("hopper-params", n_tasks=40, task_seed=1234)[0]
    np.testing.assert_allclose(csro["body_mass"], [0.4721, 1.3459, 0.8594, 2.0021, 1.9761], atol=5e-5)
    assert get_tasks("cheetah-dir") == [{"direction": -1.0}, {"direction": 1.0}]


@pytest.mark.parametrize("name", ENV_NAMES)
def test_task_sets_reproducible_and_independent_of_global_rng(name):
    np.random.seed(0)
    first = get_tasks(name, n_tasks=5, task_seed=7)
    np.random.seed(123)
    state = np.random.get_state()
    assert get_tasks(name, n_tasks=5, task_seed=7) == first
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    if name != "cheetah-dir":
        assert get_tasks(name, n_tasks=5, task_seed=8) != first


def test_split():
    assert train_test_split("ant-dir") == (list(range(10)), list(range(10, 20)))
    assert train_test_split("cheetah-dir") == ([0, 1], [0, 1])
    assert train_test_split("point-robot", n_tasks=40, n_train=30) == (list(range(30)), list(range(30, 40)))


@pytest.mark.parametrize("name", ENV_NAMES)
def test_same_seed_same_trajectory(name):
    def rollout():
        env = make_env(name, 0)
        obs, _ = env.reset(seed=42)
        trajectory = [obs]
        for action in random_actions(25, env.action_space.shape[0]):
            obs, reward, terminated, truncated, _ = env.step(action)
            trajectory.append(np.append(obs, reward))
            if terminated or truncated:
                break
        return np.concatenate(trajectory)

    np.testing.assert_array_equal(rollout(), rollout())


def test_set_task_in_place_and_registered_ids():
    env = gym.make("omrl/CheetahVel-v0", task_id=3)
    assert env.unwrapped.task == {"velocity": get_tasks("cheetah-vel")[3]["velocity"]}
    env.unwrapped.set_task(get_tasks("cheetah-vel")[4])
    assert env.unwrapped.task == get_tasks("cheetah-vel")[4]
    assert all(gym.spec(GYM_IDS[name]).max_episode_steps == HORIZONS[name] for name in ENV_NAMES)
    assert gym.make("omrl/WalkerParams-v0", task_id=1).unwrapped.task == get_tasks("walker-params")[1]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="valid names are: point-robot"):
        make_env("cheetah-speed", 0)
    with pytest.raises(ValueError, match="valid names are"):
        get_tasks("Ant-Dir")
    with pytest.raises(ValueError, match=r"0\.\.19"):
        make_env("ant-dir", 20)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        make_env("cheetah-dir", 2)
    with pytest.raises(ValueError, match="shape"):
        make_env("hopper-params", 0).unwrapped.set_task(get_tasks("walker-params")[0])
