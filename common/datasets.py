# Offline datasets written by collect_data.py: the on-disk format, a validating loader, and the samplers every
# algorithm script uses (the whole dataset as padded tensors on the training device, tasks as a batch dimension).
#
# Layout: {root}/{env}/{behavior}/task_{id:02d}.npz and {root}/{env}/{behavior}/metadata.json. Field names follow
# Minari (terminations and truncations kept apart); each row is one transition (s, a, r, s').
import hashlib
import json
import os
import shlex
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from common.envs import DEFAULT_N_TASKS, DEFAULT_TASK_SEED, check_env_name, get_tasks, make_env

FORMAT_VERSION = 1
BEHAVIORS = ("expert", "mixed", "replay")
# name -> (dtype, trailing shape given obs_dim and act_dim)
FIELDS = {
    "observations": (np.float32, lambda o, a: (o,)),
    "actions": (np.float32, lambda o, a: (a,)),
    "rewards": (np.float32, lambda o, a: ()),
    "next_observations": (np.float32, lambda o, a: (o,)),
    "terminations": (np.bool_, lambda o, a: ()),
    "truncations": (np.bool_, lambda o, a: ()),
    "episode_ids": (np.int32, lambda o, a: ()),
    "policy_steps": (np.int64, lambda o, a: ()),
}


class DatasetError(ValueError):
    """A dataset is missing, corrupt, or does not match the env and task set it is loaded for."""


def dataset_dir(root: str, env: str, behavior: str) -> str:
    return os.path.join(root, env, behavior)


def task_file(root: str, env: str, behavior: str, task_id: int) -> str:
    return os.path.join(dataset_dir(root, env, behavior), f"task_{task_id:02d}.npz")


def collect_command(env: str, behavior: str, root: str, n_tasks: int, task_seed: int) -> str:
    command = f"python collect_data.py --env {env} --behavior {behavior}"
    if root != "data":
        command += f" --out-dir {shlex.quote(root)}"
    if env != "cheetah-dir" and (n_tasks, task_seed) != (DEFAULT_N_TASKS, DEFAULT_TASK_SEED):
        command += f" --n-tasks {n_tasks} --task-seed {task_seed}"
    return command


def atomic_write(path: str, write_fn, suffix: str = "") -> None:
    """Write through `write_fn(tmp_path)` into a temporary file of the same folder, then rename it into place."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="tmp_", suffix=suffix)
    os.close(fd)
    try:
        write_fn(tmp_path)
        umask = os.umask(0)  # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_write_json(path: str, obj) -> None:
    def write(tmp_path):
        with open(tmp_path, "w") as f:
            json.dump(obj, f, indent=1)

    atomic_write(path, write)


def save_task_data(path: str, data: dict) -> None:
    atomic_write(path, lambda tmp_path: np.savez(tmp_path, **data), suffix=".npz")


def episode_returns(data: dict) -> np.ndarray:
    return np.bincount(data["episode_ids"], weights=data["rewards"].astype(np.float64))


def _validate_task_data(path: str, data: dict, obs_dim: int, act_dim: int) -> None:
    missing = sorted(set(FIELDS) - set(data))
    if missing:
        raise DatasetError(f"{path}: missing fields {missing}")
    n = len(data["rewards"])
    if n == 0:
        raise DatasetError(f"{path}: holds no transitions")
    for name, (dtype, shape_fn) in FIELDS.items():
        array, shape = data[name], (n, *shape_fn(obs_dim, act_dim))
        if array.shape != shape:
            raise DatasetError(f"{path}: field {name!r} has shape {array.shape}, expected {shape}")
        if array.dtype != dtype:
            raise DatasetError(f"{path}: field {name!r} has dtype {array.dtype}, expected {np.dtype(dtype)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DatasetError(f"{path}: field {name!r} holds non-finite values")
    if np.abs(data["actions"]).max() > 1.0:
        raise DatasetError(f"{path}: actions leave the agent's action space [-1, 1]")
    ids = data["episode_ids"]
    if ids[0] != 0 or np.any(np.diff(ids) < 0) or np.any(np.diff(ids) > 1):
        raise DatasetError(f"{path}: episode_ids must count up from 0 in steps of 0 or 1")
    ends = np.flatnonzero(np.diff(ids)) if len(ids) > 1 else np.array([], dtype=np.int64)
    if not (data["terminations"][ends] | data["truncations"][ends]).all() or not (
        data["terminations"][-1] or data["truncations"][-1]
    ):
        raise DatasetError(f"{path}: an episode ends without a termination or truncation flag")


@dataclass
class OfflineDataset:
    """Per-task numpy arrays (fields of FIELDS) of one dataset, with its metadata."""

    env: str
    behavior: str
    metadata: dict
    tasks: dict  # task id -> {field: np.ndarray}

    @property
    def obs_dim(self) -> int:
        return self.metadata["obs_dim"]

    @property
    def act_dim(self) -> int:
        return self.metadata["act_dim"]

    def fingerprint(self) -> str:
        """A digest of the loaded tasks' arrays: the same for the same data wherever they lie, another if a value differs."""
        digest = hashlib.sha256()
        for task_id in sorted(self.tasks):
            for name in sorted(self.tasks[task_id]):
                array = np.ascontiguousarray(self.tasks[task_id][name])
                digest.update(f"{task_id}/{name}/{array.dtype.str}/{array.shape}".encode())
                digest.update(array.view(np.uint8).reshape(-1))
        return digest.hexdigest()[:16]


def load_dataset(
    env: str,
    behavior: str = "expert",
    root: str = "data",
    task_ids: Optional[Sequence[int]] = None,
    n_tasks: int = DEFAULT_N_TASKS,
    task_seed: int = DEFAULT_TASK_SEED,
) -> OfflineDataset:
    """Load and validate the dataset of `task_ids` (default: every task in it) for the given task set."""
    check_env_name(env)
    if behavior not in BEHAVIORS:
        raise DatasetError(f"unknown behavior {behavior!r}; valid ones are: {', '.join(BEHAVIORS)}")
    command = collect_command(env, behavior, root, n_tasks, task_seed)
    folder = dataset_dir(root, env, behavior)
    if not os.path.exists(os.path.join(folder, "metadata.json")):
        raise DatasetError(f"no {behavior} dataset for {env} in {folder}; create it with:\n    {command}")
    meta_path = os.path.join(folder, "metadata.json")
    try:
        with open(meta_path) as f:
            metadata = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_path}: not valid JSON ({e}); delete the folder and recollect with:\n    {command}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{meta_path}: format version {metadata.get('format_version')}, this code reads {FORMAT_VERSION}")
    if metadata.get("env") != env or metadata.get("behavior") != behavior:
        raise DatasetError(f"{meta_path}: holds {metadata.get('env')}/{metadata.get('behavior')}, not {env}/{behavior}")
    expected_tasks = get_tasks(env, n_tasks, task_seed)
    complete = sorted(int(i) for i in metadata["tasks"])
    task_ids = complete if task_ids is None else list(task_ids)
    if not task_ids:
        raise DatasetError(f"{folder}: no task has been collected yet; create them with:\n    {command}")
    for task_id in task_ids:
        if not 0 <= task_id < len(expected_tasks):
            raise DatasetError(f"task id {task_id} is out of range for {env}: valid ids are 0..{len(expected_tasks) - 1}")
        if task_id not in complete:
            raise DatasetError(f"{folder}: task {task_id} has not been collected; create it with:\n    {command}")
        recorded = metadata["tasks"][str(task_id)]["params"]
        if not _same_params(recorded, expected_tasks[task_id]):
            own_folder = os.path.join(root, f"tasks{n_tasks}_seed{task_seed}")  # a dataset folder holds one task set
            raise DatasetError(
                f"{meta_path}: task {task_id} was collected for other task parameters ({_short(recorded)}) than the task "
                f"set n_tasks={n_tasks}, task_seed={task_seed} gives ({_short(expected_tasks[task_id])}); pass the "
                f"task-set options the data were made with (metadata: {metadata['task_set']}), or collect this task set "
                f"into a folder of its own with:\n    {collect_command(env, behavior, own_folder, n_tasks, task_seed)}\n"
                f"and pass --data-dir {shlex.quote(own_folder)}"
            )
    probe = make_env(env, task_ids[0], n_tasks, task_seed)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    if (metadata.get("obs_dim"), metadata.get("act_dim")) != (obs_dim, act_dim):
        saved_dims = f"{metadata.get('obs_dim')}/{metadata.get('act_dim')}"
        raise DatasetError(f"{meta_path}: dims {saved_dims}, env has {obs_dim}/{act_dim}")
    tasks = {}
    for task_id in task_ids:
        path = task_file(root, env, behavior, task_id)
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {name: npz[name] for name in npz.files}
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing although metadata.json lists it; recollect with:\n    {command}")
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e}); delete it and recollect with:\n    {command}")
        _validate_task_data(path, data, obs_dim, act_dim)
        if len(data["rewards"]) != metadata["tasks"][str(task_id)]["num_transitions"]:
            raise DatasetError(f"{path}: {len(data['rewards'])} transitions, metadata.json says otherwise; recollect it")
        tasks[task_id] = data
    return OfflineDataset(env, behavior, metadata, tasks)


def _same_params(a, b) -> bool:
    return all(np.allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-9, atol=1e-12) for k in b) and a.keys() == b.keys()


def _short(params: dict) -> str:
    return ", ".join(f"{k}={np.round(np.asarray(v).ravel()[:3], 4).tolist()}" for k, v in params.items())


def normalization_stats(dataset: OfflineDataset, task_ids: Sequence[int], eps: float = 1e-3) -> tuple:
    """Observation mean and std (std at least eps) over the transitions of `task_ids`, e.g. the training tasks."""
    observations = np.concatenate([dataset.tasks[i]["observations"] for i in task_ids]).astype(np.float64)
    return observations.mean(0).astype(np.float32), np.maximum(observations.std(0), eps).astype(np.float32)


class TaskBatchSampler:
    """The transitions of several tasks as padded tensors (tasks x max transitions x dim) on one device.

    Sampling is batched over tasks and never synchronizes with the host: `task_idx` indexes the tasks in the
    order given at construction (0..len(task_ids)-1), not the task ids.
    """

    def __init__(self, dataset: OfflineDataset, task_ids: Sequence[int], obs_mean, obs_std, device="cpu"):
        self.task_ids = list(task_ids)
        self.device = torch.device(device)
        sizes = [len(dataset.tasks[i]["rewards"]) for i in self.task_ids]
        n_max, n_tasks = max(sizes), len(self.task_ids)
        mean, std = np.asarray(obs_mean, np.float32), np.asarray(obs_std, np.float32)

        def padded(field, transform=None):
            arrays = []
            for i in self.task_ids:
                array = dataset.tasks[i][field].astype(np.float32)
                array = transform(array) if transform else array
                arrays.append(np.concatenate([array, np.zeros((n_max - len(array), *array.shape[1:]), np.float32)]))
            return torch.as_tensor(np.stack(arrays), device=self.device)

        normalize = lambda x: (x - mean) / std  # noqa: E731
        self.observations = padded("observations", normalize)
        self.actions = padded("actions")
        self.rewards = padded("rewards").unsqueeze(-1)
        self.next_observations = padded("next_observations", normalize)
        self.terminations = padded("terminations").unsqueeze(-1)
        self.sizes = torch.as_tensor(sizes, device=self.device)

        # Episodes: start index and length per task, padded with length-0 episodes.
        starts, lengths = [], []
        for i in self.task_ids:
            ids = dataset.tasks[i]["episode_ids"]
            counts = np.bincount(ids)
            starts.append(np.concatenate([[0], np.cumsum(counts)[:-1]]))
            lengths.append(counts)
        e_max = max(len(s) for s in starts)
        self.episode_starts = torch.as_tensor(
            np.stack([np.pad(s, (0, e_max - len(s))) for s in starts]), device=self.device, dtype=torch.long
        )
        self.episode_lengths = torch.as_tensor(
            np.stack([np.pad(c, (0, e_max - len(c))) for c in lengths]), device=self.device, dtype=torch.long
        )
        self.num_episodes = torch.as_tensor([len(s) for s in starts], device=self.device)
        self.task_range = torch.arange(n_tasks, device=self.device)

    def _gather(self, task_idx: torch.Tensor, index: torch.Tensor) -> dict:
        rows = task_idx[:, None]
        return {
            "observations": self.observations[rows, index],
            "actions": self.actions[rows, index],
            "rewards": self.rewards[rows, index],
            "next_observations": self.next_observations[rows, index],
            "terminations": self.terminations[rows, index],
        }

    def sample(self, task_idx: torch.Tensor, batch_size: int, generator: Optional[torch.Generator] = None) -> dict:
        """Transitions drawn uniformly with replacement from each task: every field is (len(task_idx), batch, dim)."""
        u = torch.rand(len(task_idx), batch_size, device=self.device, generator=generator)
        return self._gather(task_idx, (u * self.sizes[task_idx, None]).long())

    def sample_context(
        self, task_idx: torch.Tensor, context_size: int, trajectory: bool = False, generator: Optional[torch.Generator] = None
    ) -> tuple:
        """A context per task: `context_size` random transitions, or the first `context_size` steps of one random
        episode. Returns (fields as in `sample`, mask of shape (len(task_idx), context_size, 1)); the mask is 0
        past the end of a short episode."""
        if not trajectory:
            batch = self.sample(task_idx, context_size, generator)
            return batch, torch.ones(len(task_idx), context_size, 1, device=self.device)
        u = torch.rand(len(task_idx), device=self.device, generator=generator)
        episode = (u * self.num_episodes[task_idx]).long()
        start = self.episode_starts[task_idx, episode]
        length = self.episode_lengths[task_idx, episode]
        offsets = torch.arange(context_size, device=self.device)
        valid = offsets[None] < length[:, None]
        index = start[:, None] + torch.where(valid, offsets[None], 0)
        return self._gather(task_idx, index), valid.unsqueeze(-1).float()
