"""What every algorithm script computes, pinned: a 200-step run of each on the tiny test dataset must reproduce the
recorded evaluation returns and the final checkpoint's network tensors (their sums and sums of squares).

A refactoring that leaves the computation alone passes; a real change of computation moves these numbers far more
than the tolerance, which only absorbs rounding. The record holds one entry per CPU vendor: the same code on an AMD and
an Intel machine gives tiny data and 200-step runs that differ by more than rounding (measured: relative 1e-4 to 2e-4
on some returns and tensor sums of focal, metanf and gentle), as the point-robot data do (docs/collect_data.md). A run is compared with its own vendor's entry, or, on a
vendor with none, must match one of the entries. After a deliberate change of an algorithm, record again on each
vendor's machine (`python tests/test_reference_record.py --write` writes this machine's entry) and say why in the commit
message; before and after a change meant to leave the computation alone, `python tests/test_reference_record.py
--exact` compares bit for bit with this machine's entry."""
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_algorithms import SCRIPTS, tiny  # noqa: E402

RECORD = os.path.join(ROOT, "tests", "reference_record.json")
STEPS = ["--total-steps", "200", "--eval-every", "100", "--log-every", "100"]
RELATIVE_TOLERANCE = 1e-4


def cpu_vendor() -> str:
    """The vendor_id of /proc/cpuinfo (GenuineIntel, AuthenticAMD), or the platform's processor string elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mismatches(measured: dict, recorded: dict) -> list:
    """The keys of a script's returns and tensor statistics that differ from its record by more than the tolerance."""
    if set(measured["returns"]) != set(recorded["returns"]) or set(measured["tensors"]) != set(recorded["tensors"]):
        return ["the set of returns or tensors"]
    close = lambda a, b, tiny: a == pytest.approx(b, rel=RELATIVE_TOLERANCE, abs=tiny)
    return ([key for key, value in recorded["returns"].items() if not close(measured["returns"][key], value, 1e-4)]
            + [key for key, (total, squares) in recorded["tensors"].items()
               if not (close(measured["tensors"][key][0], total, 1e-5) and close(measured["tensors"][key][1], squares, 1e-5))])


def replace_steps(arguments):
    out, skip = [], False
    for a in arguments:
        if skip:
            skip = False
            continue
        if a in ("--total-steps", "--eval-every", "--log-every"):
            skip = True
            continue
        out.append(a)
    return out + STEPS


def measure(script: str, data_dir: str, cwd: str) -> dict:
    """Train the script for 200 steps on the tiny data; its evaluation returns and checkpoint tensor statistics."""
    command = [sys.executable, os.path.join(ROOT, f"{script}.py"), *replace_steps(tiny(script)), "--data-dir", data_dir]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = glob.glob(os.path.join(cwd, "runs", f"point-robot__{script}__0__*"))
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    returns = {f"{protocol}/{task_set}": results[protocol][task_set]["mean"]
               for protocol in results if isinstance(results[protocol], dict) and "train" in results[protocol]
               for task_set in ("train", "test")}
    agent = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)["agent"]
    tensors = {}
    for network, state in agent.items():
        if network.endswith("optimizer") or network == "pseudo" or not isinstance(state, dict):
            continue
        for name, tensor in state.items():
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                t = tensor.double()
                tensors[f"{network}.{name}"] = [t.sum().item(), (t * t).sum().item()]
    return {"returns": returns, "tensors": tensors}


@pytest.mark.parametrize("script", SCRIPTS)
def test_computation_matches_the_record(data_dir, tmp_path, script):
    with open(RECORD) as f:
        records = json.load(f)
    vendor = cpu_vendor()
    measured = measure(script, data_dir, str(tmp_path))
    compared = {vendor: records[vendor]} if vendor in records else records
    differences = {name: mismatches(measured, entry[script]) for name, entry in compared.items()}
    assert any(not keys for keys in differences.values()), (
        f"{script} on this {vendor} CPU differs from the record of " + "; ".join(
            f"{name} in {keys[:5]}" for name, keys in differences.items()))


def test_mismatches_are_found_beyond_the_tolerance_only():
    recorded = {"returns": {"zero_shot/train": -10.0}, "tensors": {"actor.w": [2.0, 4.0]}}
    near = {"returns": {"zero_shot/train": -10.0005}, "tensors": {"actor.w": [2.0001, 4.0]}}
    far = {"returns": {"zero_shot/train": -10.01}, "tensors": {"actor.w": [2.0, 4.01]}}
    assert mismatches(near, recorded) == []
    assert mismatches(far, recorded) == ["zero_shot/train", "actor.w"]
    assert mismatches({"returns": {}, "tensors": {"actor.w": [2.0, 4.0]}}, recorded) == ["the set of returns or tensors"]


if __name__ == "__main__":
    # --write: record the current computation; --exact: compare with the record bit for bit (== instead of the test's
    # tolerance), the check that a refactoring on this machine changed nothing
    if sys.argv[1:] not in (["--write"], ["--exact"]):
        raise SystemExit("usage: python tests/test_reference_record.py --write | --exact")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "point-robot", "--n-tasks", "4",
                   "--n-train", "2", "--out-dir", data, "--sac-steps", "300", "--learning-starts", "100", "--batch-size",
                   "32", "--num-trajectories", "6", "--random-episodes", "1", "--log-every", "300"]
        subprocess.run(command, cwd=data, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        record = {}
        for script in SCRIPTS:
            cwd = os.path.join(tmp, script)
            os.makedirs(cwd)
            record[script] = measure(script, data, cwd)
            print(script, record[script]["returns"], flush=True)
    with open(RECORD) as f:
        records = json.load(f)
    vendor = cpu_vendor()
    if sys.argv[1] == "--exact":
        if vendor not in records:
            raise SystemExit(f"no record for this {vendor} CPU (recorded: {', '.join(records)}); write one with --write")
        different = [script for script in SCRIPTS if record[script] != records[vendor][script]]
        if different:
            raise SystemExit(f"different from the {vendor} record: {', '.join(different)}")
        print(f"identical to the {vendor} record")
    else:
        with open(RECORD + ".tmp", "w") as f:
            json.dump({**records, vendor: record}, f, indent=1, sort_keys=True)
        os.replace(RECORD + ".tmp", RECORD)
        print(f"wrote the {vendor} entry of {RECORD}")
