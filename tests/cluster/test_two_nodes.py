"""Online DPO submitted through the Jobs API to a real two-node Ray cluster on this machine.

The head and a second node each run their own raylet (``LocalCluster``); custom resources
``head_node`` and ``node_b`` tell them apart, and the config pins the trainer to the head and
the sampler engine and reward actor to node_b. The job must succeed and its actors must have
run where they were pinned. A config the cluster cannot hold is rejected by the driver before
any actor starts, also when submitted with plain ``ray job submit``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from rlhf.cluster import jobs
from rlhf.run_dir import read_metrics
from tests.cluster.local_cluster import BIN, LocalCluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_nodes():
    """A head (3 CPUs, ``head_node``) and node_b (3 CPUs, ``node_b``); torn down whatever
    happens."""
    cluster = LocalCluster(env={"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"})
    try:
        cluster.start_head(num_cpus=3, resources={"head_node": 100})
        cluster.wait_for_nodes(1)
        cluster.add_node("node_b", num_cpus=3, resources={"node_b": 100})
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        cluster.shutdown()


def _tiny_online_dpo(out_dir: Path, model_path: str) -> list[str]:
    """Overrides of configs/online_dpo.yaml for one small round."""
    return [
        f"output_dir={out_dir}",
        f"model.path={model_path}",
        "rounds.rounds=1",
        "rounds.prompts_per_round=8",
        "rounds.eval_prompts=4",
        "rounds.epochs_per_round=1",
        "samplers.sampling.n=2",
        "samplers.sampling.max_tokens=8",
        "reference.backend=hf",
        "trainer.num_ranks=1",
        "trainer.zero_stage=0",
        "trainer.warmup_steps=0",
    ]


def _finish(cluster: LocalCluster, submission_id: str) -> None:
    """Stops the job if a failed assertion left it running (the cluster goes down next)."""
    client = jobs.connect(cluster.dashboard_url)
    if jobs.wait(client, submission_id, timeout_s=0) not in jobs.TERMINAL:
        client.stop_job(submission_id)


def test_submitted_job_runs_pinned_actors_on_both_nodes(two_nodes, tmp_path, embedded_model_path):
    submission_id = f"rlhf-test-{uuid.uuid4().hex[:8]}"
    pins = [
        "trainer.resources_per_rank={head_node: 1}",
        "samplers.engine.resources={node_b: 1}",
        "reward.resources={node_b: 1}",
    ]
    command = [str(BIN / "rlhf"), "submit", "configs/online_dpo.yaml"]
    command += _tiny_online_dpo(tmp_path / "run", embedded_model_path) + pins
    command += ["--address", two_nodes.dashboard_url, "--submission-id", submission_id]
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=400, env=_client_env()
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert "run directory:" in done.stdout  # the driver's own output, streamed back
    finally:
        _finish(two_nodes, submission_id)

    rounds = [r for r in read_metrics(tmp_path / "run") if "eval/reward/mean" in r]
    assert [r["round"] for r in rounds] == [0]

    placements = jobs.job_actors(two_nodes.dashboard_url, submission_id)
    where = {p.class_name: p.node_resources for p in placements}
    assert "head_node" in where["PolicyTrainer"], placements
    assert "node_b" in where["Sampler"], placements
    assert "node_b" in where["RewardActor"], placements
    assert len({p.node_id for p in placements}) == 2

    status = subprocess.run(
        [str(BIN / "rlhf"), "status", submission_id, "--address", two_nodes.dashboard_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=_client_env(),
    )
    assert f"job {submission_id}: SUCCEEDED" in status.stdout, status.stderr
    assert "PolicyTrainer" in status.stdout and "[node_b: 100]" in status.stdout


def test_plain_ray_job_submit_and_a_config_the_cluster_cannot_hold(two_nodes, tmp_path):
    """``ray job submit -- rlhf train ...``: the driver joins the cluster and checks the config
    against its two nodes before starting anything."""
    submission_id = f"rlhf-test-{uuid.uuid4().hex[:8]}"
    command = [str(BIN / "ray"), "job", "submit", "--address", two_nodes.dashboard_url]
    command += ["--working-dir", str(REPO), "--submission-id", submission_id, "--"]
    command += ["rlhf", "train", "configs/online_dpo.yaml", f"output_dir={tmp_path / 'run'}"]
    # device: cuda, so that the config itself is valid (GPUs per rank on the CPU device is a
    # config error at load): what fails is the cluster check, which has no GPU to give.
    command += ["device=cuda", "samplers.engine.resources={gpu_node: 1}"]
    command += ["trainer.num_gpus_per_rank=1"]
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=300, env=_client_env()
        )
    finally:
        _finish(two_nodes, submission_id)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-4000:]
    assert (
        "the config does not fit the Ray cluster (2 nodes: 6 CPU, 0 GPU, 100 head_node, 100 node_b)"
        in output
    ), output[-4000:]
    assert "samplers: no node has the resource 'gpu_node'" in output
    assert "trainer: 2 ranks x 1 GPU need 2 GPU, the cluster has 0" in output
    assert jobs.job_actors(two_nodes.dashboard_url, submission_id) == []  # none started


def _client_env() -> dict[str, str]:
    """This environment for the client commands; Ray's own CLI sends the cluster's token only
    when told to (``rlhf submit`` finds it by itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    if jobs.auth_headers():
        env["RAY_AUTH_MODE"] = "token"
    return env
