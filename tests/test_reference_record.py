"""What every algorithm script computes, pinned: a 200-step run of each on the tiny test dataset must reproduce the
recorded evaluation returns and the final checkpoint's network tensors (their sums and sums of squares).

A refactoring that leaves the computation alone passes; a real change of computation moves these numbers far more
than the tolerance, which only absorbs another CPU's rounding. After a deliberate change of an algorithm, record
again (`python tests/test_reference_record.py --write`) and say why in the commit message; before and after a change
meant to leave the computation alone, `python tests/test_reference_record.py --exact` compares bit for bit."""
import glob
import json
import os
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
        recorded = json.load(f)[script]
    measured = measure(script, data_dir, str(tmp_path))
    assert set(measured["returns"]) == set(recorded["returns"])
    for key, value in recorded["returns"].items():
        assert measured["returns"][key] == pytest.approx(value, rel=RELATIVE_TOLERANCE, abs=1e-4), key
    assert set(measured["tensors"]) == set(recorded["tensors"])
    for key, (total, squares) in recorded["tensors"].items():
        assert measured["tensors"][key][0] == pytest.approx(total, rel=RELATIVE_TOLERANCE, abs=1e-5), key
        assert measured["tensors"][key][1] == pytest.approx(squares, rel=RELATIVE_TOLERANCE, abs=1e-5), key


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
    if sys.argv[1] == "--exact":
        with open(RECORD) as f:
            recorded = json.load(f)
        different = [script for script in SCRIPTS if record[script] != recorded[script]]
        if different:
            raise SystemExit(f"different from the record: {', '.join(different)}")
        print("identical to the record")
    else:
        with open(RECORD + ".tmp", "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(RECORD + ".tmp", RECORD)
        print(f"wrote {RECORD}")
