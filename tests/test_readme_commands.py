"""Every ``rlhf ...`` command README.md shows in a ``bash`` block runs, with ``--dry-run``.

A dry run loads and validates the config, finds the model, reads the data or draws the prompts
and checks the resources against the local Ray it would start, without starting Ray: so a README
command whose config is wrong fails here in seconds.

Skipped, with the reason: the job-control commands (``submit``, ``status``, ``logs``, ``stop``)
talk to a cluster's Jobs API, which a test machine does not have. ``rlhf plugins`` has nothing to
dry-run and runs as it is (it only lists). The commands run in one Python process (a
subprocess, so the example plugin the README installs is registered there only), from a
temporary directory with the repository's ``configs/`` and a small ``data/prefs.parquet``.
It is marked ``integration`` because a dry run builds the embedded model when it is not cached.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
NEEDS_A_CLUSTER = ("submit", "status", "logs", "stop")
NOTHING_TO_DRY_RUN = ("plugins",)

# Runs each command through rlhf.cli.main in one process; prints one JSON line per command.
RUNNER = """
import contextlib, io, json, sys
sys.path.insert(0, sys.argv[1])  # the README's example plugin (pip install ./examples/...)
import rlhf_example_plugin.rewards, rlhf_example_plugin.rrhf  # noqa: E401, F401  registers
from rlhf.cli import main
for argv in json.loads(sys.argv[2]):
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    print(json.dumps({"argv": argv, "code": code, "output": out.getvalue()}), flush=True)
"""


def readme_commands(text: str) -> list[list[str]]:
    """The ``rlhf`` command lines of the README's ``bash`` blocks, continuations joined and
    comments dropped, as argument lists without the leading ``rlhf``."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("rlhf "):
                commands.append(shlex.split(line, comments=True)[1:])
    return commands


def test_the_readme_parser_finds_commands_and_joins_continuations() -> None:
    text = (
        "```bash\nrlhf train a.yaml x=1 \\\n    y=2   # note\nmake demo\n```\n```\nrlhf out\n```\n"
    )
    assert readme_commands(text) == [["train", "a.yaml", "x=1", "y=2"]]


@pytest.mark.integration  # finds (or builds) the embedded model; starts no Ray
def test_every_readme_command_dry_runs(embedded_model_path, tmp_path) -> None:
    commands = readme_commands((REPO / "README.md").read_text())
    assert len(commands) >= 8, commands  # the parser still finds the README's commands
    runnable = [argv for argv in commands if argv[0] not in NEEDS_A_CLUSTER]
    assert any(argv[0] == "demo" for argv in runnable) and any(a[0] == "train" for a in runnable)
    argvs = [argv if argv[0] in NOTHING_TO_DRY_RUN else [*argv, "--dry-run"] for argv in runnable]
    (tmp_path / "configs").symlink_to(REPO / "configs")
    _preference_file(tmp_path / "data" / "prefs.parquet")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER,
            str(REPO / "examples" / "plugin_package"),
            json.dumps(argvs),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [run["argv"] for run in runs] == argvs
    for run in runs:
        command = "rlhf " + " ".join(run["argv"])
        assert run["code"] == 0, f"{command}\n{run['output']}"
        if "--dry-run" in run["argv"]:
            assert "nothing was started or trained (--dry-run)" in run["output"], command
            assert "resources: fit the local Ray" in run["output"], f"{command}\n{run['output']}"
    assert (tmp_path / "runs").exists() is False  # a dry run writes no run directory


def _preference_file(path: Path) -> None:
    """A small pairs file of the embedded task, where the README's commands expect one."""
    from rlhf.task import make_prompts

    prompts = make_prompts(20, seed=0, split="train")
    path.parent.mkdir(parents=True)
    table = {"prompt": prompts, "chosen": [" i loved it"] * 20, "rejected": [" i hated it"] * 20}
    pq.write_table(pa.table(table), path)
