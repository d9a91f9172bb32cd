# The seven task families of offline meta-RL on gymnasium + the official mujoco bindings.
# Formulas follow the rlkit lineage (PEARL -> FOCAL -> CSRO -> GENTLE) as documented in
# ../shared/spec/envs.md; every deviation from it is listed in README.md, section "Environments".
import os
import warnings
from typing import Optional

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

ENV_NAMES = (
    "point-robot",
    "cheetah-vel",
    "cheetah-dir",
    "ant-dir",
    "humanoid-dir",
    "hopper-params",
    "walker-params",
)
GYM_IDS = {
    "point-robot": "omrl/PointRobot-v0",
    "cheetah-vel": "omrl/CheetahVel-v0",
    "cheetah-dir": "omrl/CheetahDir-v0",
    "ant-dir": "omrl/AntDir-v0",
    "humanoid-dir": "omrl/HumanoidDir-v0",
    "hopper-params": "omrl/HopperParams-v0",
    "walker-params": "omrl/WalkerParams-v0",
}
HORIZONS = {name: 20 if name == "point-robot" else 200 for name in ENV_NAMES}
DEFAULT_N_TASKS = 20
DEFAULT_TASK_SEED = 1337
DEFAULT_N_TRAIN = 10

_ASSETS = os.path.join(os.path.dirname(gym.__file__), "envs", "mujoco", "assets")
_PARAMS_XML = {"hopper-params": "hopper.xml", "walker-params": "walker2d.xml"}
# RandomEnv.sample_tasks (rand_param_envs/base.py): one draw per array element, in this order.
_PARAM_FIELDS = (("body_mass", 1.5), ("body_inertia", 1.5), ("dof_damping", 1.3), ("geom_friction", 1.5))
_LOG_SCALE_LIMIT = 3.0


def check_env_name(name: str) -> str:
    if name not in ENV_NAMES:
        raise ValueError(f"unknown env {name!r}; valid names are: {', '.join(ENV_NAMES)}")
    return name


def get_tasks(name: str, n_tasks: int = DEFAULT_N_TASKS, task_seed: int = DEFAULT_TASK_SEED) -> list:
    """The task parameters of a task set, as JSON-friendly dicts, drawn from a local RandomState.

    cheetah-dir always has exactly two tasks (direction -1, then +1); n_tasks and task_seed do not apply.
    """
    check_env_name(name)
    if name == "cheetah-dir":
        return [{"direction": -1.0}, {"direction": 1.0}]
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")
    rng = np.random.RandomState(task_seed)
    if name == "point-robot":
        return [{"goal": [float(x), float(y)]} for x, y in rng.uniform(-1.0, 1.0, size=(n_tasks, 2))]
    if name == "cheetah-vel":
        return [{"velocity": float(v)} for v in rng.uniform(0.0, 6.0, size=n_tasks)]
    if name in ("ant-dir", "humanoid-dir"):
        return [{"direction": float(d)} for d in rng.uniform(0.0, 2.0 * np.pi, size=n_tasks)]
    model = mujoco.MjModel.from_xml_path(os.path.join(_ASSETS, _PARAMS_XML[name]))
    tasks = []
    for _ in range(n_tasks):
        task = {}
        for field, base in _PARAM_FIELDS:
            exponent = rng.uniform(-_LOG_SCALE_LIMIT, _LOG_SCALE_LIMIT, size=getattr(model, field).shape)
            task[field] = (base**exponent).tolist()
        tasks.append(task)
    return tasks


def num_tasks(name: str, n_tasks: int = DEFAULT_N_TASKS) -> int:
    return 2 if check_env_name(name) == "cheetah-dir" else n_tasks


def train_test_split(name: str, n_tasks: int = DEFAULT_N_TASKS, n_train: int = DEFAULT_N_TRAIN) -> tuple:
    """(train_ids, test_ids): the first n_train tasks and the rest; cheetah-dir: both tasks in both sets."""
    if check_env_name(name) == "cheetah-dir":
        return [0, 1], [0, 1]
    if not 0 < n_train < n_tasks:
        raise ValueError(f"n_train must lie in [1, {n_tasks - 1}] for {n_tasks} tasks, got {n_train}")
    return list(range(n_train)), list(range(n_train, n_tasks))


def make_env(
    name: str, task_id: int, n_tasks: int = DEFAULT_N_TASKS, task_seed: int = DEFAULT_TASK_SEED, **env_kwargs
) -> gym.Env:
    """A fresh env for task `task_id` of the task set, agent actions in [-1, 1], truncated at the horizon."""
    return gym.make(GYM_IDS[check_env_name(name)], task_id=task_id, n_tasks=n_tasks, task_seed=task_seed, **env_kwargs)


def _task_env(name: str, task_id: int = 0, n_tasks: int = DEFAULT_N_TASKS, task_seed: int = DEFAULT_TASK_SEED, **env_kwargs):
    tasks = get_tasks(name, n_tasks, task_seed)
    if not 0 <= task_id < len(tasks):
        raise ValueError(f"task_id {task_id} is out of range for {name}: valid ids are 0..{len(tasks) - 1}")
    env = _ENV_CLASSES[name](tasks[task_id], **env_kwargs)
    env.task_id = task_id
    return env


class PointRobotEnv(gym.Env):
    """2-D navigation (GENTLE's variant): s' = s + a with a in [-0.1, 0.1]^2, r = -||s' - goal||."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    max_action = 0.1

    def __init__(self, task: dict, render_mode: Optional[str] = None):
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.render_mode = render_mode
        self.set_task(task)
        self._state = np.zeros(2)
        self._path = []  # the states since the last reset, for render()

    def set_task(self, task: dict):
        self.task = {"goal": [float(g) for g in task["goal"]]}
        self._goal = np.asarray(self.task["goal"], dtype=np.float64)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._state = self.np_random.uniform(-1.0, 1.0, size=2)
        self._path = [self._state.copy()]
        return self._state.copy(), {}

    def step(self, action):
        env_action = np.clip(self.max_action * np.asarray(action, dtype=np.float64), -self.max_action, self.max_action)
        self._state = self._state + env_action
        self._path.append(self._state.copy())
        reward = -float(np.linalg.norm(self._state - self._goal))
        return self._state.copy(), reward, False, False, {}

    def render(self) -> np.ndarray:
        """rgb_array: a 400x400 picture of the path since the last reset, with its start and the goal."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 4), dpi=100)
        ax, path = fig.subplots(), np.array(self._path)
        ax.plot(path[:, 0], path[:, 1], ".-", color="tab:blue", label="path")
        ax.plot(*path[0], "o", color="tab:green", label="start")
        ax.plot(*self._goal, "*", color="tab:red", markersize=14, label="goal")
        ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal", title=f"goal ({self._goal[0]:.2f}, {self._goal[1]:.2f})")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class TaskMujocoEnv(MujocoEnv):
    """A MuJoCo env whose agent acts in [-1, 1]^d; actions are rescaled to the actuator range and clipped."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}

    def __init__(self, xml_file: str, frame_skip: int, obs_dim: int, timestep: Optional[float] = None, **kwargs):
        # render_mode="rgb_array": 320x240 frames from a camera that follows the root body from the side
        kwargs = {"width": 320, "height": 240, "default_camera_config": {
            "type": int(mujoco.mjtCamera.mjCAMERA_TRACKING), "trackbodyid": 1, "distance": 4.0, "azimuth": 90.0,
            "elevation": -15.0}, **kwargs}
        obs_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
        MujocoEnv.__init__(self, os.path.join(_ASSETS, xml_file), frame_skip, obs_space, **kwargs)
        if timestep is not None:
            self.model.opt.timestep = timestep
        self.metadata = {**self.metadata, "render_fps": int(np.round(1.0 / self.dt))}
        self._ctrl_low, self._ctrl_high = self.model.actuator_ctrlrange.T.copy()
        self.action_space = spaces.Box(-1.0, 1.0, (self.model.nu,), np.float32)

    def _initialize_simulation(self):
        # gymnasium's half_cheetah.xml uses `settotalmass`, which MuJoCo 4.0 compiles with a deprecation warning
        # printed at every construction; the compiled masses are unchanged, so that one message is dropped here.
        def forward_warning(message):
            if "settotalmass" not in message:
                warnings.warn(f"MuJoCo: {message}")

        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(forward_warning)
        try:
            return super()._initialize_simulation()
        finally:
            mujoco.set_mju_user_warning(previous)

    def scale_action(self, action) -> np.ndarray:
        """rlkit's NormalizedBoxEnv: [-1, 1] -> [low, high], then clip."""
        low, high = self._ctrl_low, self._ctrl_high
        return np.clip(low + (np.asarray(action, dtype=np.float64) + 1.0) * 0.5 * (high - low), low, high)

    def _noisy_reset(self, qpos_noise: float, qvel_noise: float, gaussian_qvel: bool = False) -> np.ndarray:
        qpos = self.init_qpos + self.np_random.uniform(-qpos_noise, qpos_noise, size=self.model.nq)
        if gaussian_qvel:
            qvel = self.init_qvel + qvel_noise * self.np_random.standard_normal(self.model.nv)
        else:
            qvel = self.init_qvel + self.np_random.uniform(-qvel_noise, qvel_noise, size=self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()


class HalfCheetahTaskEnv(TaskMujocoEnv):
    """cheetah-vel: r = -|v - v*| - 0.05|a|^2; cheetah-dir: r = d v - 0.05|a|^2. Never terminates."""

    ctrl_cost_weight = 0.05

    def __init__(self, task: dict, **kwargs):
        super().__init__("half_cheetah.xml", 5, 20, **kwargs)
        self.set_task(task)

    def set_task(self, task: dict):
        if "velocity" in task:
            self.task = {"velocity": float(task["velocity"])}
        else:
            self.task = {"direction": float(task["direction"])}

    def _get_obs(self):
        data = self.data
        return np.concatenate([data.qpos[1:], data.qvel, data.body("torso").xpos])

    def reset_model(self):
        return self._noisy_reset(0.1, 0.1, gaussian_qvel=True)

    def step(self, action):
        ctrl = self.scale_action(action)
        x_before = self.data.qpos[0]
        self.do_simulation(ctrl, self.frame_skip)
        velocity = (self.data.qpos[0] - x_before) / self.dt
        if "velocity" in self.task:
            forward_reward = -abs(velocity - self.task["velocity"])
        else:
            forward_reward = self.task["direction"] * velocity
        ctrl_cost = self.ctrl_cost_weight * float(np.sum(np.square(ctrl)))
        info = {"x_velocity": velocity, "reward_forward": forward_reward, "reward_ctrl": -ctrl_cost}
        return self._get_obs(), forward_reward - ctrl_cost, False, False, info


class DirectionEnv(TaskMujocoEnv):
    """A robot rewarded for moving along the unit vector (cos t, sin t) of its task's direction angle t."""

    def __init__(self, task: dict, xml_file: str, obs_dim: int, contact_cost_weight: float, **kwargs):
        super().__init__(xml_file, 5, obs_dim, **kwargs)
        self.contact_cost_weight = contact_cost_weight
        self.set_task(task)

    def set_task(self, task: dict):
        self.task = {"direction": float(task["direction"])}
        self._unit = np.array([np.cos(self.task["direction"]), np.sin(self.task["direction"])])


class AntDirEnv(DirectionEnv):
    """r = v_xy . (cos t, sin t) - 0.5|a|^2 - w_c sum clip(cfrc_ext, -1, 1)^2 + 1; terminates unless 0.2 <= z <= 1."""

    ctrl_cost_weight = 0.5
    survive_reward = 1.0

    def __init__(self, task: dict, contact_cost_weight: float = 0.0, **kwargs):
        super().__init__(task, "ant.xml", 27, contact_cost_weight, **kwargs)

    def _get_obs(self):
        return np.concatenate([self.data.qpos[2:], self.data.qvel])

    def reset_model(self):
        return self._noisy_reset(0.1, 0.1, gaussian_qvel=True)

    def step(self, action):
        ctrl = self.scale_action(action)
        xy_before = self.data.body("torso").xpos[:2].copy()
        self.do_simulation(ctrl, self.frame_skip)
        xy_velocity = (self.data.body("torso").xpos[:2] - xy_before) / self.dt
        forward_reward = float(xy_velocity @ self._unit)
        ctrl_cost = self.ctrl_cost_weight * float(np.sum(np.square(ctrl)))
        contact_cost = self.contact_cost_weight * float(np.sum(np.square(np.clip(self.data.cfrc_ext, -1.0, 1.0))))
        # The survive bonus is paid on the terminating step too (rlkit), unlike gymnasium's Ant-v5.
        reward = forward_reward - ctrl_cost - contact_cost + self.survive_reward
        state = self.state_vector()
        terminated = not (np.isfinite(state).all() and 0.2 <= state[2] <= 1.0)
        info = {"reward_forward": forward_reward, "reward_ctrl": -ctrl_cost, "reward_contact": -contact_cost}
        return self._get_obs(), reward, terminated, False, info


class HumanoidDirEnv(DirectionEnv):
    """r = 1.25 u.dp/dt - 0.1|ctrl|^2 - min(w_c |cfrc_ext|^2, 10) + 5 (p: centre of mass); terminates unless 1 <= z <= 2."""

    forward_reward_weight = 1.25
    ctrl_cost_weight = 0.1
    alive_bonus = 5.0

    def __init__(self, task: dict, contact_cost_weight: float = 5e-7, **kwargs):
        super().__init__(task, "humanoid.xml", 376, contact_cost_weight, **kwargs)

    def _get_obs(self):
        data = self.data
        return np.concatenate(
            [data.qpos[2:], data.qvel, data.cinert.ravel(), data.cvel.ravel(), data.qfrc_actuator, data.cfrc_ext.ravel()]
        )

    def _mass_center_xy(self):
        mass = self.model.body_mass
        return (mass @ self.data.xipos[:, :2]) / mass.sum()

    def reset_model(self):
        return self._noisy_reset(0.01, 0.01)

    def step(self, action):
        ctrl = self.scale_action(action)
        xy_before = self._mass_center_xy()
        self.do_simulation(ctrl, self.frame_skip)
        displacement = self._mass_center_xy() - xy_before
        forward_reward = self.forward_reward_weight * float(displacement @ self._unit) / self.dt
        ctrl_cost = self.ctrl_cost_weight * float(np.sum(np.square(self.data.ctrl)))
        contact_cost = min(self.contact_cost_weight * float(np.sum(np.square(self.data.cfrc_ext))), 10.0)
        reward = forward_reward - ctrl_cost - contact_cost + self.alive_bonus
        height = self.data.qpos[2]
        terminated = bool(height < 1.0 or height > 2.0)
        info = {"reward_forward": forward_reward, "reward_ctrl": -ctrl_cost, "reward_contact": -contact_cost}
        return self._get_obs(), reward, terminated, False, info


class RandParamsEnv(TaskMujocoEnv):
    """Hopper / Walker2d with per-task multipliers on mass, inertia, damping and friction (rand_param_envs).

    r = dx/dt + 1 - 1e-3|a|^2, dt = 0.004 * 4 = 0.016 s as in rand_param_envs (gymnasium v5: 0.008 s).
    """

    alive_bonus = 1.0
    ctrl_cost_weight = 1e-3

    def __init__(self, task: dict, robot: str = "hopper", **kwargs):
        obs_dim = {"hopper": 11, "walker": 17}[robot]
        super().__init__(_PARAMS_XML[f"{robot}-params"], 4, obs_dim, timestep=0.004, **kwargs)
        self.robot = robot
        self._default_params = {field: getattr(self.model, field).copy() for field, _ in _PARAM_FIELDS}
        self.set_task(task)

    def set_task(self, task: dict):
        # Model arrays are overwritten in place and mj_setConst is not called, as rand_param_envs does.
        new_task = {}
        for field, _ in _PARAM_FIELDS:
            default = self._default_params[field]
            multiplier = np.asarray(task[field], dtype=np.float64)
            if multiplier.shape != default.shape:
                raise ValueError(f"task[{field!r}] has shape {multiplier.shape}, expected {default.shape}")
            getattr(self.model, field)[:] = default * multiplier
            new_task[field] = multiplier.tolist()
        self.task = new_task

    def _get_obs(self):
        return np.concatenate([self.data.qpos[1:], np.clip(self.data.qvel, -10.0, 10.0)])

    def reset_model(self):
        return self._noisy_reset(0.005, 0.005)

    def _healthy(self) -> bool:
        height, angle = self.data.qpos[1], self.data.qpos[2]
        if self.robot == "hopper":
            state = self.state_vector()
            return bool(np.isfinite(state).all() and (np.abs(state[2:]) < 100).all() and height > 0.7 and abs(angle) < 0.2)
        return bool(0.8 < height < 2.0 and -1.0 < angle < 1.0)

    def step(self, action):
        ctrl = self.scale_action(action)
        x_before = self.data.qpos[0]
        self.do_simulation(ctrl, self.frame_skip)
        velocity = (self.data.qpos[0] - x_before) / self.dt
        ctrl_cost = self.ctrl_cost_weight * float(np.sum(np.square(ctrl)))
        # The alive bonus is paid on the terminating step too (rlkit), unlike gymnasium v5.
        reward = velocity + self.alive_bonus - ctrl_cost
        info = {"x_velocity": velocity, "reward_forward": velocity, "reward_ctrl": -ctrl_cost}
        return self._get_obs(), reward, not self._healthy(), False, info


_ENV_CLASSES = {
    "point-robot": PointRobotEnv,
    "cheetah-vel": HalfCheetahTaskEnv,
    "cheetah-dir": HalfCheetahTaskEnv,
    "ant-dir": AntDirEnv,
    "humanoid-dir": HumanoidDirEnv,
    "hopper-params": lambda task, **kw: RandParamsEnv(task, robot="hopper", **kw),
    "walker-params": lambda task, **kw: RandParamsEnv(task, robot="walker", **kw),
}

for _name in ENV_NAMES:
    if GYM_IDS[_name] not in gym.registry:
        gym.register(GYM_IDS[_name], entry_point=_task_env, max_episode_steps=HORIZONS[_name], kwargs={"name": _name})
