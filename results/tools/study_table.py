# The development-set table of results/dev/metanf_study.md: every candidate against the default, seed by seed, with the
# selection rule written there (score = mean of the zero-shot train and test returns; change only if the mean paired
# difference exceeds its standard error). Run from the repository root:
#   python results/tools/study_table.py --runs-dir results/dev/runs
import glob
import json
import os
from dataclasses import dataclass

import numpy as np
import tyro

DEFAULT = "metanf-dev7"
REFERENCE = "metanf-no-flow-dev7"


@dataclass
class Args:
    runs_dir: str = "runs"
    """folder of the runs' folders (runs/, or the archive results/dev/runs)"""
    total_steps: int = 20_000
    """the budget of the development runs"""
    default: str = DEFAULT
    """the experiment the candidates are compared with (the acting rules: metanf-dev7; training candidates, evaluated
    with the chosen acting rule: metanf-act-sample-dev7)"""


def scores(runs_dir: str, total_steps: int) -> dict:
    """{exp_name: {seed: (score, train, test)}} of the finished runs (the newest run of each cell)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(runs_dir, "point-robot__*-dev7*__*__*", "results.json"))):
        with open(path) as f:
            results = json.load(f)
        if results["step"] != results["total_steps"] or results["total_steps"] != total_steps:
            continue
        _, exp, seed, _ = os.path.basename(os.path.dirname(path)).split("__")
        train, test = results["zero_shot"]["train"]["mean"], results["zero_shot"]["test"]["mean"]
        found.setdefault(exp.removesuffix("_eval"), {})[int(seed)] = ((train + test) / 2, train, test)
    return found


if __name__ == "__main__":
    args = tyro.cli(Args)
    found = scores(args.runs_dir, args.total_steps)
    default = args.default
    if default not in found:
        raise SystemExit(f"error: no finished {default} run of {args.total_steps} steps in {args.runs_dir}")
    seeds = sorted(found[default])
    print("| candidate | " + " | ".join(f"seed {s}: score (train / test)" for s in seeds)
          + " | mean paired difference d | standard error | d > se |")
    print("|---" * (len(seeds) + 4) + "|")
    for exp in [default, REFERENCE] + sorted(set(found) - {default, REFERENCE}):
        if exp not in found:
            continue
        cells = [f"{found[exp][s][0]:.2f} ({found[exp][s][1]:.2f} / {found[exp][s][2]:.2f})" if s in found[exp] else "—"
                 for s in seeds]
        paired = [found[exp][s][0] - found[default][s][0] for s in seeds if s in found[exp]]
        if exp == default or len(paired) < 2:
            tail = ["—", "—", "—"] if exp == default else [f"{np.mean(paired):+.2f} (n={len(paired)})", "—", "—"]
        else:
            mean, se = np.mean(paired), np.std(paired, ddof=1) / np.sqrt(len(paired))
            tail = [f"{mean:+.2f} (n={len(paired)})", f"{se:.2f}", "yes" if mean > se else "no"]
        print(f"| {exp} | " + " | ".join(cells + tail) + " |")
