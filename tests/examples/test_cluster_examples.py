"""The SLURM and Kubernetes examples: valid syntax, the fields their schedulers require, and a
training command that loads and fits the cluster the example itself declares."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from rlhf.cluster.resources import Node, check_fit
from rlhf.config import load_config
from rlhf.driver.online_dpo import OnlineDPOConfig
from rlhf.driver.setup import online_roles

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "examples" / "slurm" / "rlhf.sbatch"
RAYJOB = REPO / "examples" / "kubernetes" / "rayjob.yaml"


def test_sbatch_script_parses_and_starts_head_workers_then_submits():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.MULTILINE))
    assert int(directives["nodes"]) >= 2 and directives["ntasks-per-node"] == "1"
    head = text.index("ray start --head")
    worker = text.index('ray start --block --address="$gcs"')
    submit = text.index('rlhf submit "$@" --address "$dashboard"')
    assert head < worker < submit  # head first, then the workers, then the job
    assert "--dashboard-host=127.0.0.1" in text and 'dashboard="http://127.0.0.1:8265"' in text
    assert "srun" in text[head - 200 : head] and "srun" in text[worker - 200 : worker]
    assert text.index("alive_nodes") < submit  # waits for every node before submitting


def _resources(start_params: dict) -> dict[str, float]:
    """KubeRay's quoted ``resources`` start parameter, as Ray reads it."""
    raw = start_params.get("resources", '"{}"')
    return json.loads(raw.strip('"').replace('\\"', '"'))


def test_rayjob_manifest_has_kuberays_fields_and_a_config_that_fits_its_cluster():
    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["name"]
    spec = job["spec"]
    command = shlex.split(spec["entrypoint"])
    assert command[:3] == ["rlhf", "train", "configs/online_dpo.yaml"]
    head = spec["rayClusterSpec"]["headGroupSpec"]
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert head["template"]["spec"]["containers"][0]["image"]
    assert workers and all(
        group["groupName"] and group["replicas"] >= 1 and group["template"]["spec"]["containers"]
        for group in workers
    )

    cfg = load_config(OnlineDPOConfig, str(REPO / command[2]), command[3:])
    assert cfg.device == "cuda" and cfg.output_dir.startswith("/shared/")
    nodes = [Node("head", "head", {"CPU": float(head["rayStartParams"]["num-cpus"])})]
    nodes[0].resources.update(_resources(head["rayStartParams"]))
    for group in workers:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        shape = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}
        shape.update(_resources(group["rayStartParams"]))
        nodes += [Node(f"{group['groupName']}-{i}", "pod", shape) for i in range(group["replicas"])]
    assert check_fit(online_roles(cfg), nodes) == []
