import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Expert data of a 4-task point-robot task set (2 train, 2 test), collected by collect_data.py itself."""
    out = tmp_path_factory.mktemp("data")
    command = [sys.executable, os.path.join(ROOT, "collect_data.py"), "--env", "point-robot", "--n-tasks", "4",
               "--n-train", "2", "--out-dir", str(out), "--sac-steps", "300", "--learning-starts", "100", "--batch-size", "32",
               "--num-trajectories", "6", "--random-episodes", "1", "--log-every", "300"]
    result = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(out)
