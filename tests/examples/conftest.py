"""Installing plugin packages for a test, without touching the shared environment.

A package is installed with ``pip install --target`` into a temporary folder, and ``rlhf`` runs
in a subprocess with that folder on ``PYTHONPATH``: the entry points are found there, by the
driver and by the Ray workers of a local Ray it starts (they inherit its environment), or of
the session's Ray it joins (see ``run_rlhf``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PLUGIN = REPO / "examples" / "plugin_package"
RLHF = Path(sys.executable).with_name("rlhf")  # the console script of this environment


def pip_install(sources: list[Path], target: Path) -> Path:
    """Installs the packages at ``sources`` into the folder ``target``; returns ``target``.

    Offline and without dependencies (rlhf and torch are already there). Each source is built
    from a copy, since setuptools writes build/ and *.egg-info next to the sources.
    """
    copies = []
    for source in sources:
        copy = target.parent / f"{target.name}-sources" / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        copies.append(str(copy))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--no-deps", "--no-index", "--no-build-isolation", "--target", str(target)]
    done = subprocess.run([*command, *copies], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def run_rlhf(
    *args: str, plugins: Path, ray_address: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``rlhf ARGS`` from the repository root, with the packages in ``plugins`` importable.

    With ``ray_address`` (the session's Ray), a job joins that Ray (``ray.address``) instead of
    starting a local one of its own, and runs from the ``plugins`` folder: Ray puts the working
    directory of a driver that joins a cluster on the path of the job's workers, which is how
    its actors find the packages there (the session's workers do not have our PYTHONPATH).
    Paths in ``args`` must then be absolute.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), env.get("PYTHONPATH")]))
    extra = [] if ray_address is None else [f"ray.address={ray_address}"]
    return subprocess.run(
        [str(RLHF), *args, *extra],
        cwd=REPO if ray_address is None else plugins,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_package(root: Path, distribution: str, module: str, source: str) -> Path:
    """A one-module package whose module is an ``rlhf.algorithms`` entry point."""
    root.mkdir(parents=True)
    (root / f"{module}.py").write_text(source)
    (root / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=68"]\n'
        'build-backend = "setuptools.build_meta"\n'
        "[project]\n"
        f'name = "{distribution}"\n'
        'version = "1.0"\n'
        '[project.entry-points."rlhf.algorithms"]\n'
        f'{module} = "{module}"\n'
        "[tool.setuptools]\n"
        f'py-modules = ["{module}"]\n'
    )
    return root


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory) -> Path:
    """The folder ``examples/plugin_package`` is installed into (once per session)."""
    return pip_install([EXAMPLE_PLUGIN], tmp_path_factory.mktemp("example") / "site")
