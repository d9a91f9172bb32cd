# Benchmark utility, in the spirit of CleanRL's cleanrl_utils/benchmark.py:
#   run     the grid algorithms x envs x seeds, on local worker processes or as a slurm job array
#   report  results.json files and TensorBoard events -> markdown tables (Meta-NF Table 1 layout, the paper's zero-shot
#           numbers beside) and learning curves
#   speed   gradient updates per second of each algorithm, achieved FLOP/s against the device's matmul rate, and
#           the env steps per second of data collection
#   envs    random-policy and zero-action returns and env steps per second of the seven task families
#   archive copy the finished runs' results.json, args.json and TensorBoard events (no checkpoints) into a folder that
#           can be committed, so that a report can be made again when runs/ is gone
import ast
import csv
import glob
import importlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import List, Optional

import numpy as np
import tyro

try:
    import fcntl
except ImportError:  # Windows: no locks, so never start two grids over each other there
    fcntl = None

ROOT = os.path.dirname(os.path.abspath(__file__))

PROTOCOLS = ("zero_shot", "few_shot")
# each algorithm paper's own online protocol (results.json key): CSRO's non-prior collection (csro.py), SELECT's proximal
# collection (select_omrl.py), GENTLE's one-shot exploration (gentle.py); a report gives each its own table
ONLINE_PROTOCOLS = ("non_prior", "proximal", "one_shot")

# The Meta-NF paper's Table 1 (zero-shot, last checkpoint, mean ± std over 5 seeds): {env: {column: (train, test)}}.
def paper_table(path: str) -> dict:
    with open(path, newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        table = {}
        for row in rows:
            table.setdefault(row["env"], {})[row["column"]] = (row["train"], row["test"] or None)
    return table


PAPER_ZERO_SHOT = paper_table(os.path.join(ROOT, "results", "metanf_paper_table1.csv"))


@dataclass
class Run:
    """Run (or print) the grid: one `python {algo}.py --env E --seed S --exp-name X [flags] [extra]` per cell."""

    algos: List[str] = field(default_factory=lambda: ["focal", "unicorn", "metanf"])
    """algorithm scripts, each optionally with its own flags in one quoted string, e.g. 'metanf --no-flow'"""
    envs: List[str] = field(default_factory=lambda: ["point-robot"])
    """task families"""
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """seeds"""
    extra: str = ""
    """arguments appended to every command, written with '=': --extra='--total-steps 50000 --device cuda'"""
    exp_suffix: str = ""
    """appended to every experiment name, e.g. '-dev7' for runs on another task set (--extra='--task-seed 7 ...'), so that
    they are never taken for, resumed as or reported with the runs of the default task set"""
    eval_of: Optional[str] = None
    """evaluate instead of train: each cell runs --eval-only on the final checkpoint of this experiment's run of the same
    env and seed, e.g. --algos 'metanf --no-selection' --eval-of metanf"""
    workers: int = 0
    """processes run at once; 0 only prints the commands (a dry run)"""
    progress_every: float = 300.0
    """seconds between progress lines (each running cell's step, updates/s and time left, from its log); 0: none"""
    threads: Optional[int] = None
    """CPU threads per process (default: the machine's cores divided by the workers)"""
    runs_dir: str = "runs"
    """the runs folder of the working directory, where the scripts write (checked for finished runs; logs go in logs/)"""
    slurm: bool = False
    """write a slurm job-array script (one array task per command) and submit it with sbatch when sbatch exists"""
    slurm_cpus: int = 4
    """slurm: CPUs per array task"""
    slurm_gpus: int = 1
    """slurm: GPUs per array task (0 for none)"""
    slurm_mem: str = "16G"
    """slurm: memory per array task"""
    slurm_time: str = "08:00:00"
    """slurm: time limit per array task"""
    slurm_partition: Optional[str] = None
    """slurm: partition"""
    slurm_script: str = "benchmark.slurm"
    """slurm: path of the job-array script to write"""


@dataclass
class Report:
    """Aggregate finished runs into results/{env}.md (return tables, runtime table) and learning-curve PNGs."""

    runs_dir: str = "runs"
    """folder holding the runs' folders"""
    out_dir: Optional[str] = None
    """where the markdown tables and plots go (if unset: the folder report inside --runs-dir, runs/report by default)"""
    force: bool = False
    """overwrite a page whose inputs (columns, seeds per column, budgets, data) differ from the new one's"""
    envs: Optional[List[str]] = None
    """envs to report (if unset: every env found)"""
    exps: Optional[List[str]] = None
    """experiment names (columns) to report, in this order (if unset: every one found, sorted)"""
    command: str = ""
    """the command that produced the runs, written above the tables"""
    plots: bool = True
    """draw learning curves from the TensorBoard events (needs matplotlib)"""
    paper: bool = True
    """print the Meta-NF paper's Table 1 numbers under the zero-shot rows (--no-paper for data not made like the paper's)"""
    total_steps: Optional[int] = None
    """report the runs trained for this many gradient steps (if unset: each column's largest budget); budgets never mix"""
    page_suffix: str = ""
    """appended to the env's name in the page's and the plots' file names: --page-suffix=-mixed writes point-robot-mixed.md"""
    compare: List[str] = field(default_factory=list)
    """paired differences A − B seed by seed, each 'A B' (two columns, every protocol both report) or 'A:protocol
    B:protocol', e.g. 'select_omrl select_omrl-no-weighted-bc' 'select_omrl:proximal select_omrl:non_prior'"""
    mixed: bool = False
    """allow columns of different budgets or data on one page (each column's budget and data are in its table)"""
    note: str = ""
    """a paragraph under the page's title, e.g. what is still training on a partial page"""


@dataclass
class Speed:
    """Print gradient updates per second of each algorithm's training step and data-collection env steps per second."""

    env: str = "point-robot"
    """task family whose observation and action sizes the networks take"""
    algos: List[str] = field(default_factory=lambda: ["focal", "csro", "unicorn", "gentle", "metanf", "select_omrl"])
    """algorithm scripts to time"""
    device: str = "auto"
    """torch device; auto: cuda when available"""
    updates: int = 50
    """timed updates per algorithm (after 10 warm-up updates)"""
    collect_steps: int = 300
    """timed SAC steps of data collection (updates from the first step), for 1 and for 20 tasks; 0: not timed"""


@dataclass
class Envs:
    """Print, per task family, the return of a uniform-random policy and of the zero action over one episode of a task,
    and env steps per second through make_env (wrappers included) with random actions."""

    task_id: int = 0
    """the task of each family"""
    seconds: float = 2.0
    """how long to step each family for the rate"""


def exp_name(spec: str) -> str:
    """'metanf --no-flow --no-selection' -> 'metanf-no-flow-no-selection' (no '__', which separates run-name fields)."""
    script, *flags = shlex.split(spec)
    return "-".join([script] + [f.lstrip("-").replace("_", "-") for f in flags])


def grid(args: Run) -> list:
    """One cell per algorithm x env x seed: {env, exp_name (the run folder's), seed, argv}; with --eval-of, a cell whose
    checkpoint is not there yet has argv None and a `missing` message."""
    commands = []
    for spec in args.algos:
        script, *flags = shlex.split(spec)
        path = os.path.join(ROOT, f"{script}.py")
        if not os.path.exists(path):
            raise SystemExit(f"error: no algorithm script {path}")
        for env in args.envs:
            for seed in args.seeds:
                command = [sys.executable, os.path.relpath(path), "--env", env, "--seed", str(seed)]
                name = exp_name(spec) + args.exp_suffix
                command += ["--exp-name", name] + flags + shlex.split(args.extra)
                cell = {"env": env, "exp_name": name, "seed": seed, "argv": command}
                if args.eval_of:
                    cell["exp_name"] += "_eval"
                    source = finished(args.runs_dir, {"env": env, "exp_name": args.eval_of, "seed": seed, "argv": command},
                                      ignore=tuple(script_module(path).EVALUATION_OPTIONS))
                    if source:
                        cell["argv"] = command + ["--eval-only", "--checkpoint", os.path.join(source, "checkpoint.pt")]
                    else:
                        cell["argv"] = None
                        budget = requested_total_steps(command)
                        cell["missing"] = (f"no finished {args.eval_of} run of {env}, seed {seed} at {budget:,} steps in "
                                           f"{args.runs_dir} to evaluate")
                commands.append(cell)
    return commands


def default_total_steps(script: str) -> int:
    """The `total_steps` default of a script's Args, read from its source (importing it would import torch)."""
    with open(script) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Args":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) == "total_steps":
                    return ast.literal_eval(item.value)
    raise SystemExit(f"error: {script} has no `total_steps` default in its Args")


def requested_total_steps(argv: list) -> int:
    """The --total-steps of a command, or its script's default when the command does not give it."""
    for i, arg in enumerate(argv):
        if arg == "--total-steps":
            return int(argv[i + 1])
        if arg.startswith("--total-steps="):
            return int(arg.split("=", 1)[1])
    return default_total_steps(argv[1])


# Arguments that change neither the networks nor the random stream of training (the scripts' RESUME_OPTIONS): a run
# made with other values of these still fills a cell. Every other argument, and the data, must be the command's.
NON_RESULT_OPTIONS = ("exp_name", "checkpoint", "eval_only", "total_steps", "eval_every", "log_every", "checkpoint_every",
                      "capture_video", "device", "save_model", "data_dir")
_modules, _fingerprints = {}, {}


def script_module(path: str):
    """An algorithm script imported as a module (its definitions only: its training runs under __main__)."""
    name = os.path.splitext(os.path.basename(path))[0]
    if name not in _modules:
        sys.path.insert(0, ROOT)
        _modules[name] = importlib.import_module(name)
    return _modules[name]


def command_settings(argv: list, resolve: bool = True) -> tuple:
    """(every argument the command's script runs with, as its args.json holds them; the names the command gives)."""
    module = script_module(argv[1])
    flags = argv[2:]
    try:
        args = tyro.cli(module.Args, args=flags)
        if resolve:  # as the script resolves them: its family's defaults, then those that depend on other arguments
            family = module.Args(env=args.env, **module.env_defaults(args.env))
            args = module.resolve_unset(tyro.cli(module.Args, args=flags, default=family))
    except (SystemExit, KeyError):
        raise SystemExit(f"error: the script rejects the arguments of `{shlex.join(argv)}`")
    names = {f.name for f in fields(module.Args)}
    given = set()
    for token in flags:
        if token.startswith("--"):
            name = token[2:].split("=")[0].replace("-", "_")
            given.add(name[3:] if name not in names and name.startswith("no_") else name)
    return json.loads(json.dumps(module.asdict(args))), given


def data_fingerprint(settings: dict) -> Optional[str]:
    """The fingerprint of the data a run with these settings loads (None if they cannot be loaded)."""
    from common.datasets import DatasetError, load_dataset
    from common.envs import train_test_split

    key = tuple(settings[k] for k in ("env", "behavior", "data_dir", "n_tasks", "task_seed", "n_train"))
    if key not in _fingerprints:
        try:
            train_ids, test_ids = train_test_split(settings["env"], settings["n_tasks"], settings["n_train"])
            dataset = load_dataset(settings["env"], settings["behavior"], settings["data_dir"],
                                   sorted(set(train_ids + test_ids)), settings["n_tasks"], settings["task_seed"])
            _fingerprints[key] = dataset.fingerprint()
        except (DatasetError, ValueError):
            _fingerprints[key] = None
    return _fingerprints[key]


def expected_settings(cell: dict) -> dict:
    """What a run of this cell must have been made with: the command's arguments (an evaluation: those of the
    checkpoint's run, with the evaluation's own flags) and the data's fingerprint, under "data_fingerprint"."""
    if "expected" not in cell:
        argv = cell["argv"]
        if "--eval-only" in argv:
            checkpoint = argv[argv.index("--checkpoint") + 1]
            with open(os.path.join(os.path.dirname(checkpoint), "args.json")) as f:
                source = json.load(f)
            command, given = command_settings(argv, resolve=False)
            expected = {**source, **{k: command[k] for k in given if k not in ("eval_only", "checkpoint")}}
            expected["evaluates"] = os.path.realpath(checkpoint)
        else:
            expected, _ = command_settings(argv)
        expected["data_fingerprint"] = data_fingerprint(expected)
        cell["expected"] = expected
    return cell["expected"]


def setting_differences(run_dir: str, expected: dict, ignore: tuple = ()) -> list:
    """How a run differs from the expected settings: '--name VALUE (the command: VALUE)' per argument that changes the
    result, the data (by fingerprint) and, for an evaluation, the checkpoint."""
    with open(os.path.join(run_dir, "args.json")) as f:
        saved = json.load(f)
    results_path = os.path.join(run_dir, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    differences = [f"--{k.replace('_', '-')} {saved.get(k)!r} (the command: {v!r})" for k, v in expected.items()
                   if k not in NON_RESULT_OPTIONS + ("data_fingerprint", "evaluates") + ignore and saved.get(k) != v]
    fingerprint = results.get("data_fingerprint")
    if fingerprint is None and os.path.exists(os.path.join(run_dir, "checkpoint.pt")) and not results:
        fingerprint = expected["data_fingerprint"]  # checked by the script itself when it resumes from the checkpoint
    if fingerprint != expected["data_fingerprint"]:
        differences.append(f"data {fingerprint or 'not recorded'} (the command's: {expected['data_fingerprint'] or 'not found'})")
    if "evaluates" in expected and os.path.realpath(results.get("checkpoint") or "") != expected["evaluates"]:
        differences.append(f"evaluates {results.get('checkpoint')} (the command: {expected['evaluates']})")
    return differences


def log_path(runs_dir: str, cell: dict) -> str:
    return os.path.join(runs_dir, "logs", f"{cell['env']}__{cell['exp_name']}__{cell['seed']}.log")


def try_lock(f) -> bool:
    """Take the exclusive lock of an open file unless another process holds it; the lock goes when the file is closed."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def running(runs_dir: str, cell: dict) -> bool:
    """Whether a benchmark process is running this cell now: it holds a lock on the cell's log while its run lasts."""
    if not os.path.exists(log_path(runs_dir, cell)):
        return False
    with open(log_path(runs_dir, cell), "a") as f:
        return not try_lock(f)


def finished(runs_dir: str, cell: dict, interrupted: bool = False, mismatched: Optional[dict] = None,
             ignore: tuple = ()) -> Optional[str]:
    """The newest run folder of this cell made with the command's settings and data whose results.json holds the final
    step (or, with interrupted, a checkpoint.pt to resume from and no final result), trained for the command's total
    steps (its --total-steps or the script's default). Runs of the cell made otherwise go into mismatched, with how
    they differ; ignore names arguments not compared (an evaluation's own, when looking for the run it evaluates)."""
    wanted = requested_total_steps(cell["argv"])
    pattern = os.path.join(runs_dir, f"{cell['env']}__{cell['exp_name']}__{cell['seed']}__*", "args.json")
    for path in sorted(glob.glob(pattern), reverse=True):
        run_dir = os.path.dirname(path)
        results_path, has_checkpoint = os.path.join(run_dir, "results.json"), os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
        results = None
        if os.path.exists(results_path):
            with open(results_path) as f:
                results = json.load(f)
        with open(path) as f:
            total_steps = (results or json.load(f))["total_steps"]
        done = results is not None and results["step"] == results["total_steps"]
        if total_steps != wanted or (interrupted and (done or not has_checkpoint)) or (not interrupted and not done):
            continue
        differences = setting_differences(run_dir, expected_settings(cell), ignore)
        if differences:
            if mismatched is not None:
                mismatched[run_dir] = differences
            continue
        return run_dir
    return None


def slurm_script(args: Run, commands: list) -> str:
    lines = ["#!/bin/bash", "#SBATCH --job-name=omrl-benchmark", f"#SBATCH --array=0-{len(commands) - 1}",
             f"#SBATCH --cpus-per-task={args.slurm_cpus}", f"#SBATCH --mem={args.slurm_mem}",
             f"#SBATCH --time={args.slurm_time}", f"#SBATCH --output={args.runs_dir}/logs/slurm-%A_%a.log"]
    if args.slurm_gpus:
        lines.append(f"#SBATCH --gres=gpu:{args.slurm_gpus}")
    if args.slurm_partition:
        lines.append(f"#SBATCH --partition={args.slurm_partition}")
    lines += ["", f"cd {shlex.quote(os.getcwd())}", "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK", "COMMANDS=("]
    lines += [f"  {shlex.quote(shlex.join(['python', *c['argv'][1:]]))}" for c in commands]
    lines += [")", 'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"', ""]
    return "\n".join(lines)


def run_grid(args: Run):
    cells = grid(args)
    missing = [cell["missing"] for cell in cells if cell["argv"] is None]
    for message in missing:
        print(f"cannot run: {message}", flush=True)
    todo = []
    for cell in (cell for cell in cells if cell["argv"] is not None):
        if running(args.runs_dir, cell):
            log = log_path(args.runs_dir, cell)
            print(f"skip (running in another benchmark process, log {log}): {shlex.join(cell['argv'])}", flush=True)
            continue
        mismatched = {}
        done = finished(args.runs_dir, cell, mismatched=mismatched)
        if done:
            print(f"skip (finished in {done}): {shlex.join(cell['argv'])}", flush=True)
            continue
        stopped = finished(args.runs_dir, cell, interrupted=True, mismatched=mismatched)
        for run_dir, differences in mismatched.items():
            print(f"not reused: {run_dir} was made with other settings: {'; '.join(differences)}", flush=True)
        if stopped:  # goes on from its last checkpoint, in its own folder
            cell["argv"] = cell["argv"] + ["--checkpoint", os.path.join(stopped, "checkpoint.pt")]
            print(f"resume (interrupted in {stopped}): {shlex.join(cell['argv'])}", flush=True)
        todo.append(cell)
    if args.slurm:
        if not todo:
            return print("nothing to submit")
        os.makedirs(os.path.join(args.runs_dir, "logs"), exist_ok=True)
        with open(args.slurm_script, "w") as f:
            f.write(slurm_script(args, todo))
        print(f"wrote {args.slurm_script} ({len(todo)} array tasks)")
        if shutil.which("sbatch"):
            subprocess.run(["sbatch", args.slurm_script], check=True)
        else:
            print(f"sbatch not found: submit it on the cluster with `sbatch {args.slurm_script}`")
        return
    if args.workers == 0:
        for cell in todo:
            print(shlex.join(cell["argv"]))
        return print(f"# {len(todo)} commands; pass --workers N to run them")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    os.makedirs(os.path.join(args.runs_dir, "logs"), exist_ok=True)

    processes, stopping = {}, []  # the running training processes by log path; the signal that stops the grid

    def execute(cell):
        log = log_path(args.runs_dir, cell)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        start = time.time()
        with open(log, "a") as f:  # a cell's earlier runs (other budgets, interrupted parts) keep their logs
            if stopping:
                return cell, None, log
            if not try_lock(f):  # held while the run lasts, so that a second grid never trains the same run at the same time
                print(f"skip (started meanwhile by another benchmark process): {shlex.join(cell['argv'])}", flush=True)
                return cell, None, log
            done = finished(args.runs_dir, cell)
            if done:
                print(f"skip (finished meanwhile in {done}): {shlex.join(cell['argv'])}", flush=True)
                return cell, None, log
            f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cell['argv'])}\n")
            f.flush()
            print(f"start {cell['env']}__{cell['exp_name']}__{cell['seed']} (log {log}): {shlex.join(cell['argv'])}", flush=True)
            process = subprocess.Popen(cell["argv"], stdout=f, stderr=subprocess.STDOUT, env=env)
            processes[log] = process
            returncode = process.wait()
            processes.pop(log)
        outcome = "done" if returncode == 0 else "STOPPED" if stopping else "FAILED"
        print(f"{outcome} in {time.time() - start:,.0f} s: {shlex.join(cell['argv'])}", flush=True)
        return cell, returncode, log

    def stop(signum, frame):  # the training processes save a checkpoint and exit; a later `run` resumes them
        stopping.append(signum)
        print(f"{signal.Signals(signum).name}: stopping {len(processes)} run(s), each saves a checkpoint", flush=True)
        for process in list(processes.values()):
            process.send_signal(signal.SIGTERM)

    def report_progress(done: threading.Event):
        while not done.wait(args.progress_every):
            for log in list(processes):
                line = last_progress_line(log)
                if line:
                    print(f"{os.path.basename(log)[: -len('.log')]}: {line}", flush=True)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    all_done = threading.Event()
    if args.progress_every > 0:
        threading.Thread(target=report_progress, args=(all_done,), daemon=True).start()
    try:
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            outcomes = list(pool.map(execute, todo))
    finally:
        all_done.set()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopping:
        raise SystemExit(128 + stopping[0])
    failures = [(cell, log) for cell, returncode, log in outcomes if returncode not in (0, None)]
    ran = sum(returncode is not None for _, returncode, _ in outcomes)
    print(f"{ran - len(failures)} of {ran} runs succeeded")
    for cell, log in failures:
        print(f"  failed: {shlex.join(cell['argv'])}\n    log: {log}")
    for message in missing:
        print(f"  not run: {message}")
    if failures or missing:
        raise SystemExit(1)


def last_progress_line(log: str) -> Optional[str]:
    """The newest 'step N/T | R updates/s | ETA ...' line of a log (its last 8 kB), or None."""
    with open(log, "rb") as f:
        f.seek(max(0, os.path.getsize(log) - 8192))
        lines = f.read().decode(errors="replace").splitlines()
    return next((line for line in reversed(lines) if line.startswith("step ") and "/s |" in line), None)


def collect_runs(runs_dir: str, total_steps: Optional[int] = None) -> dict:
    """{(env, exp_name): {seed: (run_dir, results)}}: the newest finished run of every cell, all of one budget per column:
    total_steps if given, else the column's largest. A finished run is a training run that reached its total_steps, or
    an --eval-only run (its exp_name ends in _eval) of such a run's final checkpoint."""
    budgets = {}
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "results.json"))):
        run_dir = os.path.dirname(path)
        with open(path) as f:
            results = json.load(f)
        if results["step"] != results["total_steps"]:
            continue  # a run still going, or an --eval-only run of an intermediate checkpoint
        env, exp, seed, stamp = os.path.basename(run_dir).split("__")
        cell = budgets.setdefault((env, exp), {}).setdefault(results["total_steps"], {})
        if int(seed) not in cell or stamp > os.path.basename(cell[int(seed)][0]).split("__")[3]:
            cell[int(seed)] = (run_dir, results)
    cells = {}
    for key, by_budget in budgets.items():
        budget = total_steps if total_steps is not None else max(by_budget)
        if budget in by_budget:
            cells[key] = by_budget[budget]
    return cells


def column_data(runs: dict) -> dict:
    """{seed: (the settings that change a result, data fingerprint)} of a column's runs, from args.json and results.json."""
    out = {}
    for seed, (run_dir, results) in runs.items():
        path, saved = os.path.join(run_dir, "args.json"), {}
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
        out[seed] = ({k: v for k, v in saved.items() if k not in NON_RESULT_OPTIONS + ("seed",)},
                     results.get("data_fingerprint"))
    return out


def default_rule_values(results: dict, settings: dict) -> dict:
    """The values the run's script gives its arguments whose default depends on other ones (those whose default is None,
    e.g. GENTLE's --dynamics-seed = --seed), from the run's other settings; {} where the script or its arguments cannot be
    read."""
    try:
        module = script_module(os.path.join(ROOT, f"{results['algorithm']}.py"))
        unset = {f.name: None for f in fields(module.Args) if f.default is None}
        resolved = asdict(module.resolve_unset(module.Args(**{**settings, **unset})))
        return {name: resolved[name] for name in unset}
    except (KeyError, TypeError, ImportError):
        return {}


def column_problems(runs: dict) -> list:
    """How the runs of one column differ from each other: an argument that changes the result (unless every run has the
    value its default rule gives it from the run's other settings, as GENTLE's --dynamics-seed from --seed), or the data."""
    data = column_data(runs)
    names = sorted(set().union(*(settings for settings, _ in data.values())))
    differing = [k for k in names if len({json.dumps(v[0].get(k)) for v in data.values()}) > 1]
    if differing:
        rules = {seed: default_rule_values(results, {**data[seed][0], "seed": seed}) for seed, (_, results) in runs.items()}
        differing = [k for k in differing if not all(k in rules[s] and rules[s][k] == v[0].get(k) for s, v in data.items())]
    problems = [f"--{k.replace('_', '-')}: " + ", ".join(f"seed {s} {v[0].get(k)!r}" for s, v in data.items())
                for k in differing]
    if len({fingerprint for _, fingerprint in data.values()}) > 1:
        problems.append("data: " + ", ".join(f"seed {s} {v[1]}" for s, v in data.items()))
    return problems


def column_budget_and_data(runs: dict) -> tuple:
    """(gradient steps, data fingerprint or None) of a column whose runs agree."""
    (total_steps,) = {results["total_steps"] for _, results in runs.values()}
    return total_steps, next(iter(column_data(runs).values()))[1]


def mean_std(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.2f} ± {values.std():.2f} (n={len(values)})"


def reported_protocols(env: str, cells: dict) -> list:
    """zero-shot, few-shot, then each online protocol that a run of the env reports."""
    found = {key for (e, _), runs in cells.items() if e == env for _, results in runs.values() for key in results}
    return list(PROTOCOLS) + [p for p in ONLINE_PROTOCOLS if p in found]


def parse_comparison(spec: str, columns: list) -> tuple:
    """'A B' or 'A:protocol B:protocol' -> ((A, protocol or None), (B, protocol or None)), checked against the columns."""
    sides = spec.split()
    if len(sides) != 2:
        raise SystemExit(f"error: --compare '{spec}': give two columns, 'A B' or 'A:protocol B:protocol'")
    parsed = []
    for side in sides:
        exp, _, protocol = side.partition(":")
        if exp not in columns:
            raise SystemExit(f"error: --compare '{spec}': no column {exp!r} (the columns: {', '.join(columns)})")
        if protocol and protocol not in PROTOCOLS + ONLINE_PROTOCOLS:
            raise SystemExit(f"error: --compare '{spec}': no protocol {protocol!r} "
                             f"(one of: {', '.join(PROTOCOLS + ONLINE_PROTOCOLS)})")
        parsed.append((exp, protocol or None))
    if (parsed[0][1] is None) != (parsed[1][1] is None):
        raise SystemExit(f"error: --compare '{spec}': name a protocol on both sides or on neither")
    return tuple(parsed)


def paired_differences(env: str, cells: dict, comparisons: list) -> list:
    """Markdown lines: per comparison, protocol and task set, d = A − B on each seed both have, mean ± standard error."""
    lines = ["## Paired differences", "",
             "d = A − B on each seed that both have (a seed gives both the same start states and offline contexts); mean "
             "d ± its standard error (std with ddof = 1, over √n); A ahead: the seeds with d > 0.", "",
             "| A | B | task set | d per seed | mean d ± se | A ahead |", "|---|---|---|---|---|---|"]
    for (a, protocol_a), (b, protocol_b) in comparisons:
        runs_a, runs_b = cells[(env, a)], cells[(env, b)]
        seeds = sorted(set(runs_a) & set(runs_b))
        pairs = [(protocol_a, protocol_b)] if protocol_a else [
            (p, p) for p in reported_protocols(env, cells)
            if all(p in runs[s][1] for runs in (runs_a, runs_b) for s in seeds)]
        for pa, pb in pairs:
            for task_set in ("train", "test"):
                by_seed = {s: runs_a[s][1][pa][task_set]["mean"] - runs_b[s][1][pb][task_set]["mean"] for s in seeds
                           if pa in runs_a[s][1] and pb in runs_b[s][1]}
                if not by_seed:
                    continue
                d = np.array(list(by_seed.values()))
                se = f"{d.std(ddof=1) / np.sqrt(len(d)):.2f}" if len(d) > 1 else "—"
                lines.append(f"| {a} {pa.replace('_', '-')} | {b} {pb.replace('_', '-')} | {task_set} | "
                             + ", ".join(f"{s}: {v:+.2f}" for s, v in by_seed.items())
                             + f" | {d.mean():+.2f} ± {se} (n={len(d)}) | {int((d > 0).sum())} of {len(d)} |")
    return lines + [""]


def runs_machines(env: str, cells: dict, algos: list) -> str:
    """The machines the page's training runs measured their wall time on, as their results.json record it (the scripts
    write it since 2026-12-07), never the machine that makes the page."""
    machines = {}
    for a in algos:
        for seed, (_, results) in sorted(cells[(env, a)].items()):
            if "checkpoint" not in results:
                machines.setdefault(results.get("machine"), []).append(f"{a} {seed}")
    known = [f"{machine} ({len(runs)} runs)" if len(machines) > 1 else machine
             for machine, runs in sorted((m, r) for m, r in machines.items() if m is not None)]
    if None in machines:
        known.append(f"not recorded by {len(machines[None])} runs (made before results.json held it)")
    return "Machine: " + "; ".join(known) + "."


def env_report(env: str, cells: dict, command: str, paper: bool = True, comparisons: tuple = (), note: str = "") -> str:
    algos = [exp for e, exp in cells if e == env]
    lines = [f"# {env}", "", *([note, ""] if note else []),
             f"Generated by `python benchmark.py report` on {date.today().isoformat()}.", ""]
    if command:
        lines += ["Runs produced by:", "", "```bash", command, "```", ""]
    paper = paper and env in PAPER_ZERO_SHOT
    lines += [
        "Each cell: the return of the last checkpoint, averaged over the train (or test) tasks, then mean ± standard "
        "deviation over seeds (numpy, ddof = 0), n seeds." + (" Rows marked (paper): the Meta-NF paper's Table 1 (5 seeds) "
        "for the column's algorithm or ablation, where it has one." if paper else ""), ""]
    for protocol in reported_protocols(env, cells):
        lines += [f"## {protocol.replace('_', '-')}", ""]
        if protocol in ONLINE_PROTOCOLS:
            lines += ["Only the algorithms whose paper has this protocol report it (— for the others).", ""]
        lines += ["| task set | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
        budgets = [column_budget_and_data(cells[(env, a)]) for a in algos]
        lines.append("| gradient steps, data | " + " | ".join(f"{steps:,}, {data or 'not recorded'}" for steps, data in budgets)
                     + " |")
        for task_set in ("train", "test"):
            returns = [[r[protocol][task_set]["mean"] for _, r in cells[(env, a)].values() if protocol in r] for a in algos]
            row = [mean_std(values) if values else "—" for values in returns]
            lines.append(f"| {task_set} | " + " | ".join(row) + " |")
        if any("online" in r[protocol] for a in algos for _, r in cells[(env, a)].values() if protocol in r):
            for task_set in ("train", "test"):  # SELECT's "average return during the online test phase"
                returns = [[r[protocol]["online"][task_set]["mean"] for _, r in cells[(env, a)].values()
                            if "online" in r.get(protocol, {})] for a in algos]
                row = [mean_std(values) if values else "—" for values in returns]
                lines.append(f"| {task_set}, every online episode | " + " | ".join(row) + " |")
        if protocol == "zero_shot" and paper:
            for i, task_set in enumerate(("train", "test")):
                numbers = [PAPER_ZERO_SHOT[env].get(a.removesuffix("_eval"), (None, None))[i] or "—" for a in algos]
                lines.append(f"| {task_set} (paper: 5 seeds, 200,000 steps, its own data) | " + " | ".join(numbers) + " |")
        lines += ["", "Per seed, train / test (a seed gives every column the same start states and offline contexts, so "
                  "the columns compare seed by seed):", "", "| seed | " + " | ".join(algos) + " |",
                  "|---" * (len(algos) + 1) + "|"]
        for seed in sorted({seed for a in algos for seed in cells[(env, a)]}):
            runs = [cells[(env, a)][seed][1].get(protocol) if seed in cells[(env, a)] else None for a in algos]
            row = [f"{r['train']['mean']:.2f} / {r['test']['mean']:.2f}" if r else "—" for r in runs]
            lines.append(f"| {seed} | " + " | ".join(row) + " |")
        lines.append("")
    if comparisons:
        lines += paired_differences(env, cells, comparisons)
    lines += ["## Runtime", "", "| algorithm | seeds | gradient steps | wall time (min, mean) | updates/s (mean) |",
              "|---|---|---|---|---|"]
    for a in algos:
        runs = [r for _, r in cells[(env, a)].values()]
        if "checkpoint" in runs[0]:
            lines.append(f"| {a} | {len(runs)} | {runs[0]['total_steps']:,} | evaluation of saved checkpoints | — |")
            continue
        # a resumed run's results.json rates only its last segment; wall_time adds up all of them
        minutes = np.mean([r["wall_time"] for r in runs]) / 60
        updates_per_second = np.mean([r["total_steps"] / r["wall_time"] for r in runs])
        lines.append(f"| {a} | {len(runs)} | {runs[0]['total_steps']:,} | {minutes:.1f} | {updates_per_second:.1f} |")
    lines += ["", "Wall time: of the whole run, evaluations included (a resumed run's segments added up); "
              "updates/s: gradient steps / wall time.", "", runs_machines(env, cells, algos), ""]
    return "\n".join(lines)


def curves(env: str, cells: dict, out_dir: str, name: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    for protocol in reported_protocols(env, cells):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        for ax, task_set in zip(axes, ("train", "test")):
            tag = f"eval/{protocol}/{task_set}_return"
            for exp in [e for v, e in cells if v == env]:
                series = []
                for run_dir, results in cells[(env, exp)].values():
                    if "checkpoint" in results:
                        continue  # an evaluation of a final checkpoint has one point, no curve
                    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
                    events.Reload()
                    if tag in events.Tags()["scalars"]:
                        series.append({e.step: e.value for e in events.Scalars(tag)})
                steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
                if not steps:
                    continue
                values = np.array([[s[t] for t in steps] for s in series])
                ax.plot(steps, values.mean(0), label=f"{exp} (n={len(series)})")
                ax.fill_between(steps, values.mean(0) - values.std(0), values.mean(0) + values.std(0), alpha=0.2)
            ax.set_title(f"{env}, {protocol.replace('_', '-')}, {task_set} tasks")
            ax.set_xlabel("gradient steps")
            ax.set_ylabel("return")
            if ax.lines:  # no curves when every run of the env is an evaluation of a final checkpoint
                ax.legend(fontsize=8)
        save(fig, f"{name}_{protocol}.png")
        by_episode = {exp: [r[protocol]["by_episode"] for _, r in cells[(env, exp)].values()
                            if "by_episode" in r.get(protocol, {})] for v, exp in cells if v == env}
        if any(by_episode.values()):  # the return of each scored episode of the online phase, at the last checkpoint
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            for ax, task_set in zip(axes, ("train", "test")):
                for exp, runs in by_episode.items():
                    if runs:
                        values = np.array([run[task_set] for run in runs])
                        episodes = np.arange(1, values.shape[1] + 1)
                        ax.plot(episodes, values.mean(0), marker=".", label=f"{exp} (n={len(runs)})")
                        ax.fill_between(episodes, values.mean(0) - values.std(0), values.mean(0) + values.std(0), alpha=0.2)
                ax.set_title(f"{env}, {protocol.replace('_', '-')} online phase, {task_set} tasks")
                ax.set_xlabel("scored episode")
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
                ax.set_ylabel("return")
                ax.legend(fontsize=8)
            save(fig, f"{name}_{protocol}_by_episode.png")
    return written


def trajectory_figures(env: str, cells: dict, out_dir: str, name: str) -> list:
    """Point-robot: per column, the zero-shot trajectories of its final checkpoint on the test tasks side by side, from
    the videos/trajectories.json that a run with --capture-video saved (the column's lowest seed that has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for exp in [e for v, e in cells if v == env]:
        paths = [os.path.join(run_dir, "videos", "trajectories.json") for _, (run_dir, _) in sorted(cells[(env, exp)].items())]
        paths = [p for p in paths if os.path.exists(p)]
        if not paths:
            continue
        with open(paths[0]) as f:
            tasks = json.load(f).get("test", {})
        columns = min(len(tasks), 5)
        rows = -(-len(tasks) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
        for ax in axes.flat[len(tasks):]:
            ax.axis("off")
        for ax, (task_id, episode) in zip(axes.flat, sorted(tasks.items(), key=lambda kv: int(kv[0]))):
            xy = np.array(episode["states"])
            ax.plot(xy[:, 0], xy[:, 1], ".-", color="tab:blue")
            ax.plot(*xy[0], "o", color="tab:green", label="start")
            ax.plot(*episode["goal"], "*", color="tab:red", markersize=14, label="goal")
            ax.plot(*xy[episode["settled"]], "s", color="tab:orange", label=f"code settled (step {episode['settled']})")
            ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal", title=f"test task {task_id}")
            ax.legend(fontsize=7, loc="best")
        seed = os.path.basename(os.path.dirname(os.path.dirname(paths[0]))).split("__")[2]
        fig.suptitle(f"{exp}, zero-shot, seed {seed}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}_{exp}_trajectories.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def report(args: Report):
    found = collect_runs(args.runs_dir, args.total_steps)
    exps = args.exps or sorted({exp for _, exp in found})
    cells = {(env, exp): found[(env, exp)] for exp in exps for env in sorted({e for e, _ in found}) if (env, exp) in found}
    envs = args.envs or sorted({env for env, _ in cells})
    if not cells:
        budget = f" trained for {args.total_steps:,} steps" if args.total_steps is not None else ""
        raise SystemExit(f"error: no finished runs{budget} in {args.runs_dir} "
                         "(a finished run's results.json has step == total_steps)")
    out_dir = args.out_dir if args.out_dir is not None else os.path.join(args.runs_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    for env in envs:
        page = os.path.join(out_dir, f"{env}{args.page_suffix}.md")
        columns = [exp for e, exp in cells if e == env]
        for exp in columns:
            problems = column_problems(cells[(env, exp)])
            if problems:
                raise SystemExit(f"error: the {env} runs of column {exp} were made with different settings or data "
                                 f"({'; '.join(problems)}); one column holds runs of one setting: remove or archive apart the "
                                 f"runs that differ, or give them another --exp-name")
        budgets = {exp: column_budget_and_data(cells[(env, exp)]) for exp in columns}
        if len(set(budgets.values())) > 1 and not args.mixed:
            listed = "; ".join(f"{exp}: {steps:,} steps, data {data}" for exp, (steps, data) in budgets.items())
            raise SystemExit(f"error: the {env} columns differ in budget or data ({listed}); report them on pages of their "
                             f"own (--exps, --total-steps), or pass --mixed to put them on one page")
        comparisons = [parse_comparison(spec, columns) for spec in args.compare]
        inputs = report_inputs(env, cells)
        if os.path.exists(page) and not args.force and page_inputs(page) != inputs:
            raise SystemExit(f"error: {page} was made from other runs (columns, seeds, budgets or data) than these; "
                             "pass --force to overwrite it, or --out-dir another folder")
        # the second line: the report's own arguments, with which the page is made again (tests/test_results_pages.py does)
        made_by = {k: v for k, v in asdict(args).items() if k not in ("out_dir", "force")}
        text = (f"<!-- inputs: {json.dumps(inputs, sort_keys=True)} -->\n<!-- report: {json.dumps(made_by)} -->\n"
                + env_report(env, cells, args.command, args.paper, comparisons, args.note))
        if args.plots:
            for path in curves(env, cells, out_dir, f"{env}{args.page_suffix}"):
                text += f"\n![{os.path.basename(path)}]({os.path.basename(path)})\n"
            figures = trajectory_figures(env, cells, out_dir, f"{env}{args.page_suffix}") if env == "point-robot" else []
            if figures:
                text += ("\n## Zero-shot trajectories\n\nThe final checkpoint's zero-shot episode on the test tasks (from "
                         "`--capture-video`): start, goal, and the step from which the acting code stayed near its final "
                         "value.\n")
            for path in figures:
                text += f"\n![{os.path.basename(path)}]({os.path.basename(path)})\n"
        atomic_text(page, text)
        print(f"wrote {page}")


def report_inputs(env: str, cells: dict) -> dict:
    """What a page is made of: per column its seeds, budget and data (behavior and task set, from each run's args.json,
    and the fingerprint of the data's values where results.json has one)."""
    inputs = {}
    for (e, exp), runs in cells.items():
        if e != env:
            continue
        data = set()
        for run_dir, results in runs.values():
            path = os.path.join(run_dir, "args.json")
            if os.path.exists(path):
                with open(path) as f:
                    saved = json.load(f)
                fingerprint = f", data {results['data_fingerprint']}" if "data_fingerprint" in results else ""
                data.add(f"{saved.get('behavior')}, task seed {saved.get('task_seed')}{fingerprint}")
        total_steps = {results["total_steps"] for _, results in runs.values()}
        inputs[exp] = {"seeds": sorted(runs), "total_steps": sorted(total_steps), "data": sorted(data)}
    return inputs


def page_inputs(page: str) -> Optional[dict]:
    with open(page) as f:
        first = f.readline()
    if first.startswith("<!-- inputs: ") and first.rstrip().endswith(" -->"):
        return json.loads(first[len("<!-- inputs: "):-len(" -->") - 1])
    return None  # a page without the record is taken as made from other inputs


def atomic_text(path: str, text: str):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class Archive:
    """Copy the finished runs' results.json, args.json and TensorBoard events (not their checkpoints) into a folder that
    can be committed; `report --runs-dir` that folder makes the tables and curves again."""

    runs_dir: str = "runs"
    """folder holding the runs' folders"""
    out_dir: str = "results/runs"
    """where the copies go, one folder per run under the run's own name"""
    exps: Optional[List[str]] = None
    """experiment names to archive (if unset: every one found)"""
    total_steps: Optional[int] = None
    """archive the runs trained for this many gradient steps (if unset: each column's largest budget)"""


def archive(args: Archive):
    cells = collect_runs(args.runs_dir, args.total_steps)
    copied = 0
    for (_, exp), runs in sorted(cells.items()):
        if args.exps and exp not in args.exps:
            continue
        for run_dir, _ in runs.values():
            target = os.path.join(args.out_dir, os.path.basename(run_dir))
            events = sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "events.*")))
            os.makedirs(os.path.join(target, "videos"), exist_ok=True)
            for name in ["results.json", "args.json", *events, os.path.join("videos", "trajectories.json")]:
                source = os.path.join(run_dir, name)
                if not os.path.exists(source):
                    continue
                destination = os.path.join(target, name)
                tmp = os.path.join(os.path.dirname(destination), f".{os.path.basename(name)}.tmp")
                shutil.copyfile(source, tmp)
                os.replace(tmp, destination)  # a copy is whole or absent
            if not os.listdir(os.path.join(target, "videos")):
                os.rmdir(os.path.join(target, "videos"))
            copied += 1
            print(f"archived {run_dir} -> {target}")
    if not copied:
        raise SystemExit(f"error: no finished runs to archive in {args.runs_dir}")


def envs(args: Envs):
    from common.envs import ENV_NAMES, make_env

    print("| env | random-policy return | zero-action return | env steps/s |\n|---|---|---|---|")
    for name in ENV_NAMES:
        env, cells = make_env(name, args.task_id), []
        for policy in ("random", "zero"):
            env.action_space.seed(0)
            env.reset(seed=0)
            total, steps, terminated, truncated = 0.0, 0, False, False
            while not (terminated or truncated):
                action = env.action_space.sample() if policy == "random" else np.zeros(env.action_space.shape, np.float32)
                _, reward, terminated, truncated, _ = env.step(action)
                total, steps = total + reward, steps + 1
            cells.append(f"{total:.2f} ({steps}{', terminated' if terminated else ''})")
        env.reset(seed=1)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            count += 1
            if terminated or truncated:
                env.reset()
        print(f"| {name} | {cells[0]} | {cells[1]} | {count / (time.perf_counter() - start):,.0f} |")


def speed(args: Speed):
    if args.updates < 1 or args.collect_steps < 0:
        raise SystemExit(f"error: --updates must be at least 1 and --collect-steps at least 0 (0: the data collection is "
                         f"not timed); got {args.updates} and {args.collect_steps}")
    import importlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from common.envs import make_env

    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    probe = make_env(args.env, 0)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]

    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync()
    start, repeats = time.perf_counter(), 20 if device.type == "cuda" else 5
    for _ in range(repeats):
        a @ b
    sync()
    peak = 2 * n**3 * repeats / (time.perf_counter() - start)
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({processor}); dense fp32 matmul {n}x{n}: {peak / 1e9:,.1f} GFLOP/s")
    print("\n| algorithm | env | updates/s | GFLOP per update | achieved GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|")
    for name in args.algos:
        module = importlib.import_module(name)
        algo_args = module.resolve_unset(module.Args(env=args.env, **module.env_defaults(args.env)))
        agent_class = next(v for k, v in vars(module).items() if isinstance(v, type) and hasattr(v, "NETWORKS"))
        agent = agent_class(obs_dim, act_dim, algo_args, device)
        m, bsz, ctx = algo_args.meta_batch_size, algo_args.batch_size, algo_args.context_size

        def random_fields(rows):
            return {"observations": torch.randn(m, rows, obs_dim, device=device),
                    "actions": torch.rand(m, rows, act_dim, device=device) * 2 - 1,
                    "rewards": torch.randn(m, rows, 1, device=device),
                    "next_observations": torch.randn(m, rows, obs_dim, device=device),
                    "terminations": torch.zeros(m, rows, 1, device=device)}

        batch, context, mask = random_fields(bsz), random_fields(ctx), torch.ones(m, ctx, 1, device=device)
        task_idx = torch.randint(10, (m,), device=device)
        for _ in range(10):
            agent.update(batch, context, mask, task_idx)
        with FlopCounterMode(display=False) as counter:
            agent.update(batch, context, mask, task_idx)
            agent.update(batch, context, mask, task_idx)  # one critic-only and one actor step
        flops = counter.get_total_flops() / 2
        sync()
        start = time.perf_counter()
        for _ in range(args.updates):
            agent.update(batch, context, mask, task_idx)
        sync()
        ups = args.updates / (time.perf_counter() - start)
        achieved = flops * ups
        row = [name, args.env, f"{ups:,.1f}", f"{flops / 1e9:.3f}", f"{achieved / 1e9:,.1f}", f"{100 * achieved / peak:.1f}"]
        print("| " + " | ".join(row) + " |")

    if args.collect_steps == 0:
        return
    import collect_data

    print("\n| data collection | tasks | env steps/s (SAC updates from the first step) |\n|---|---|---|")
    for n_tasks in (1, 20):
        with tempfile.TemporaryDirectory() as tmp:
            collect_args = collect_data.Args(env=args.env, out_dir=tmp, sac_steps=args.collect_steps, learning_starts=0,
                                             log_every=10**9, n_tasks=max(n_tasks, 20))
            collect_args.hidden_dim = collect_data.DEFAULT_HIDDEN_DIM.get(args.env, 256)
            collect_args.checkpoint_every = args.collect_steps
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(os.path.join(tmp, "tb"))
            tasks = [{}] * 20
            start = time.perf_counter()
            with open(os.devnull, "w") as devnull:
                stdout, sys.stdout = sys.stdout, devnull
                try:
                    collect_data.train_sac(collect_args, list(range(n_tasks)), tasks, device, writer)
                finally:
                    sys.stdout = stdout
            elapsed = time.perf_counter() - start
            writer.close()
        print(f"| {args.env} | {n_tasks} | {args.collect_steps * n_tasks / elapsed:,.0f} |")


if __name__ == "__main__":
    command = tyro.extras.subcommand_cli_from_dict(
        {"run": Run, "report": Report, "speed": Speed, "envs": Envs, "archive": Archive},
        description="Run grids of algorithms x envs x seeds, report their results, and time the training steps.",
    )
    if isinstance(command, Run):
        run_grid(command)
    elif isinstance(command, Report):
        report(command)
    elif isinstance(command, Envs):
        envs(command)
    elif isinstance(command, Archive):
        archive(command)
    else:
        speed(command)
