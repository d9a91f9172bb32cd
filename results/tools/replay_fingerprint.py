# Which copy of the data did an archived run train on? Runs made before results.json recorded the data's fingerprint
# say nothing, and the copy collect_data.py makes follows the machine (docs/collect_data.md). This tool replays a run's
# first --steps gradient steps on the data here, with the code of the run's time (the repository at the last commit
# before the run started, or --commit), and compares every loss the run logged at that step. Only if all of them are
# bit-identical does it write the fingerprint of the data here into the run's results.json, and into the results.json of
# the evaluations of its checkpoint (--eval-of runs), with a field that says how it was established. A difference
# proves nothing by itself (another machine may compute differently); the run is then left as it is. From the
# repository root:
#   python results/tools/replay_fingerprint.py --runs-dir results/200k/runs --exps csro metanf
import datetime
import glob
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import benchmark  # noqa: E402


@dataclass
class Args:
    runs_dir: str = "results/200k/runs"
    """folder of the archived runs' folders"""
    exps: tuple[str, ...] = ()
    """training experiments to check (if empty: every one whose runs lack a fingerprint)"""
    steps: int = 1000
    """replay this many gradient steps and compare the losses logged at this step (a multiple of the runs' --log-every)"""
    commit: Optional[str] = None
    """run the code of this commit, or of the working tree if "." (if unset: the last commit before each run started)"""
    dry_run: bool = False
    """compare only; write nothing"""


def logged_losses(run_dir: str, step: int) -> dict:
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: value for tag in events.Tags()["scalars"] if tag.startswith("losses/")
            for s, value in ((e.step, e.value) for e in events.Scalars(tag)) if s == step}


def command_line(settings: dict) -> list:
    argv = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def source_tree(commit: str, cache: dict, workdir: str) -> str:
    if commit == ".":
        return ROOT
    if commit not in cache:
        cache[commit] = os.path.join(workdir, commit[:12])
        os.makedirs(cache[commit])
        archive = subprocess.run(["git", "-C", ROOT, "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", cache[commit]], input=archive, check=True)
    return cache[commit]


def replay(run_dir: str, args: Args, cache: dict, workdir: str) -> Optional[str]:
    """The note to record if the replay reproduces the run's logged losses, else None (and why, printed)."""
    with open(os.path.join(run_dir, "args.json")) as f:
        settings = json.load(f)
    with open(os.path.join(run_dir, "results.json")) as f:
        script = json.load(f)["algorithm"] + ".py"
    commit = args.commit or subprocess.run(["git", "-C", ROOT, "rev-list", "-1", "--before=" + run_dir.split("__")[-1],
                                            "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    tree = source_tree(commit, cache, workdir)
    data_dir = os.path.join(ROOT, settings["data_dir"])
    settings.update(exp_name="replay", total_steps=args.steps, eval_every=args.steps, checkpoint=None, eval_only=False,
                    save_model=False, data_dir=data_dir)
    if "dynamics_dir" in settings:  # GENTLE's fits go with the replays, not beside the data
        settings["dynamics_dir"] = os.path.join(workdir, "dynamics")
    cwd = tempfile.mkdtemp(dir=workdir)
    done = subprocess.run([sys.executable, os.path.join(tree, script), *command_line(settings)], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        print(f"{run_dir}: the replay failed:\n{done.stderr[-2000:]}")
        return None
    (replay_dir,) = glob.glob(os.path.join(cwd, "runs", "*"))
    archived, replayed = logged_losses(run_dir, args.steps), logged_losses(replay_dir, args.steps)
    differing = sorted(tag for tag in archived if replayed.get(tag) != archived[tag])
    if not archived or differing:
        print(f"{run_dir}: not reproduced ({len(differing)} of {len(archived)} losses differ at step {args.steps}, "
              f"e.g. {differing[:3]})")
        return None
    code = "the working tree" if commit == "." else f"commit {commit[:7]}"
    return (f"steps 1-{args.steps} replayed on {datetime.date.today()} with {script} of {code} on the data "
            f"here: the {len(archived)} losses logged at step {args.steps} are bit-identical")


def write_fingerprint(run_dir: str, fingerprint: str, note: str):
    path = os.path.join(run_dir, "results.json")
    with open(path) as f:
        results = json.load(f)
    results.update(data_fingerprint=fingerprint, data_fingerprint_replay=note)
    benchmark.atomic_text(path, json.dumps(results, indent=1))


if __name__ == "__main__":
    args = tyro.cli(Args)
    runs = {}
    for path in sorted(glob.glob(os.path.join(args.runs_dir, "*", "results.json"))):
        with open(path) as f:
            results = json.load(f)
        run_dir = os.path.dirname(path)
        runs[os.path.basename(run_dir)] = (run_dir, results)
    todo = [(name, run_dir) for name, (run_dir, results) in runs.items()
            if "data_fingerprint" not in results and not results.get("checkpoint")
            and (not args.exps or name.split("__")[1] in args.exps)]
    if not todo:
        raise SystemExit(f"error: no training run without a data fingerprint in {args.runs_dir}"
                         + (f" among {list(args.exps)}" if args.exps else ""))
    cache = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, run_dir in todo:
            note = replay(run_dir, args, cache, workdir)
            if note is None:
                continue
            with open(os.path.join(run_dir, "args.json")) as f:
                settings = json.load(f)
            fingerprint = benchmark.data_fingerprint({**settings, "data_dir": os.path.join(ROOT, settings["data_dir"])})
            evaluations = [d for d, r in runs.values() if "data_fingerprint" not in r
                           and os.path.basename(os.path.dirname(r.get("checkpoint") or "")) == name]
            print(f"{run_dir}: {note}; data {fingerprint}" + (f"; and {len(evaluations)} evaluations of it" if evaluations else ""))
            if not args.dry_run:
                for target in [run_dir, *evaluations]:
                    write_fingerprint(target, fingerprint, note)
