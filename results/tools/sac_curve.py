# The SAC learning curve of results/cheetah-vel/sac_budget.md and the budget its rule (fixed there before the runs)
# chooses: R_i(B) is task i's mean training-episode return over the window (B - window, B]; the budget is the smallest
# B of the grid such that R_i(T) - R_i(B) <= tolerance * (R_i(T) - R_i(window)) for every task i, T the run's last step.
# Reads the TensorBoard events that collect_data.py writes (one folder per start of a run that was cut and resumed).
# Run from the repository root:
#   python results/tools/sac_curve.py --runs-dir data/sac-curve/runs --plot results/cheetah-vel/sac_curve.png
import glob
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tyro

TAG = re.compile(r"^charts/task_(\d+)/episodic_return$")


@dataclass
class Args:
    runs_dir: str = "data/sac-curve/runs"
    """the TensorBoard folder of the collection (collect_data.py's --out-dir followed by /runs)"""
    total_steps: int = 200_000
    """the SAC run's --sac-steps (T of the rule); the rule is applied only to a finished run"""
    window: int = 10_000
    """environment steps a point of the curve averages over (the episodes that end in (B - window, B])"""
    grid: int = 25_000
    """the candidate budgets are the multiples of this"""
    tolerance: float = 0.05
    """the share of the whole run's improvement that may still be to come after the chosen budget"""
    plot: Optional[str] = None
    """write the curves to this PNG file (needs matplotlib)"""


def read_curves(runs_dir: str) -> dict:
    """{task id: {step: episodic return}} over every run folder in `runs_dir`. Folders are read in the order their
    runs started (the timestamp that ends their names), and a later folder's episodes replace an earlier one's at the
    same step: a resumed run starts again from its last saved state, before the step where the cut run stopped."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = sorted(glob.glob(os.path.join(runs_dir, "*__*")), key=lambda p: int(p.rsplit("__", 1)[1]))
    curves = {}
    for folder in folders:
        events = EventAccumulator(folder, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            match = TAG.match(tag)
            if match:
                curves.setdefault(int(match.group(1)), {}).update({e.step: e.value for e in events.Scalars(tag)})
    return curves


def window_mean(curve: dict, end: int, window: int) -> float:
    """Mean return of the episodes that end in (end - window, end]; the steps are 0-based, as logged, so an episode
    that ends at step s has taken s + 1 environment steps."""
    values = [v for s, v in curve.items() if end - window < s + 1 <= end]
    return float(np.mean(values)) if values else float("nan")


def choose_budget(curves: dict, total_steps: int, window: int, grid: int, tolerance: float) -> tuple:
    """(budget, rows): rows = [(B, {task: R(B)}, {task: share of the improvement still to come}, passes)]."""
    final = {i: window_mean(c, total_steps, window) for i, c in curves.items()}
    first = {i: window_mean(c, window, window) for i, c in curves.items()}
    rows, budget = [], None
    for end in range(grid, total_steps + 1, grid):
        means = {i: window_mean(c, end, window) for i, c in curves.items()}
        remaining = {i: (final[i] - means[i]) / (final[i] - first[i]) if final[i] != first[i] else float("nan")
                     for i in curves}
        passes = all(final[i] - means[i] <= tolerance * (final[i] - first[i]) for i in curves)
        rows.append((end, means, remaining, passes))
        if passes and budget is None:
            budget = end
    return budget, rows


if __name__ == "__main__":
    args = tyro.cli(Args)
    curves = read_curves(args.runs_dir)
    if not curves:
        raise SystemExit(f"error: no charts/task_XX/episodic_return events in {args.runs_dir}; run the collection of "
                         "results/cheetah-vel/sac_budget.md first")
    last = min(max(c) + 1 for c in curves.values())
    tasks = sorted(curves)
    if last < args.total_steps:
        print(f"the run is not finished: every task has reached step {last:,} of {args.total_steps:,}; the curve so far:")
        for end in range(args.window, last + 1, args.window):
            print(f"{end:>8,}: " + ", ".join(f"task {i}: {window_mean(curves[i], end, args.window):8.2f}" for i in tasks))
    else:
        budget, rows = choose_budget(curves, args.total_steps, args.window, args.grid, args.tolerance)
        print("| B | " + " | ".join(f"task {i}: R(B) (still to come)" for i in tasks) + " | passes |")
        print("|---" * (len(tasks) + 2) + "|")
        first = {i: window_mean(curves[i], args.window, args.window) for i in tasks}
        print(f"| {args.window:,} | " + " | ".join(f"{first[i]:.1f} (100%)" for i in tasks) + " | — |")
        for end, means, remaining, passes in rows:
            cells = [f"{means[i]:.1f} ({100 * remaining[i]:.1f}%)" for i in tasks]
            print(f"| {end:,} | " + " | ".join(cells) + f" | {'yes' if passes else 'no'} |")
        if budget is not None and budget < args.total_steps:
            print(f"\nchosen budget: {budget:,} SAC steps")
        else:
            print(f"\nno budget below {args.total_steps:,} passes: the curve has not levelled off within the run")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for i in tasks:
            ends = list(range(args.window, last + 1, args.window))
            ax.plot(ends, [window_mean(curves[i], e, args.window) for e in ends], marker=".", label=f"task {i}")
        ax.set_xlabel("SAC steps")
        ax.set_ylabel(f"training-episode return (mean over {args.window:,} steps)")
        ax.set_title("cheetah-vel: SAC's learning curve")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
