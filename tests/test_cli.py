"""The ``rlhf`` command's error paths: a message that says where, never a traceback."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_an_unknown_algorithm_is_a_config_error_naming_the_known_ones():
    result = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "train", "configs/dpo.yaml", "algorithm=ppx"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rlhf train: config error: configs/dpo.yaml: algorithm:"), last
    assert "'ppx'" in last and "dpo, online_dpo, ppo" in last
