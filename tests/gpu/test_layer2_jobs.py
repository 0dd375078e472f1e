"""Layer 2: Ray and vLLM's CUDA build on GPUs: the engines, the NCCL sync, colocation.

For users' GPU machines (and any later machine that has Ray and vLLM): each test runs a real job
or engine on the embedded tiny model with ``device: cuda``. Skipped with the reason where CUDA,
Ray or vLLM's CUDA build (or enough GPUs) is missing. Written and skipped on the project's
machines: none of this has run on a GPU yet (docs/platform.md, GPU tier).
"""

from __future__ import annotations

import math

import pytest

from rlhf.config import from_dict
from rlhf.run_dir import read_metrics
from tests.gpu.conftest import needs_layer2

pytestmark = [pytest.mark.gpu, pytest.mark.integration]

# One token's |log-prob| difference allowed between a sampler and the trainer after a sync
# (the sync probe's defaults: rlhf.driver.sync_probe).
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1}


@pytest.fixture(scope="module")
def gpu_ray():
    """A local Ray that sees this machine's GPUs (logical CPUs, as the CPU suite's)."""
    import ray
    import torch

    ray.init(num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_path():
    from rlhf.task import build_tiny_model

    return str(build_tiny_model(progress=False))


def _gpu_job(kind: str, out_dir, model_path: str, dtype: str, **sections):
    """An online DPO or PPO job on the GPUs: trainer and samplers one GPU each, NCCL sync."""
    from rlhf.driver.online_dpo import OnlineDPOConfig
    from rlhf.driver.ppo import PPOConfig

    engine = {"num_gpus": 1, "gpu_memory_utilization": 0.2}
    data = {
        "output_dir": str(out_dir),
        "device": "cuda",
        "model": {"path": model_path, "dtype": dtype},
        "samplers": {"sync": "broadcast", "engine": engine},
        "reference": {"engine": engine},
        "trainer": {"zero_stage": 3, "num_gpus_per_rank": 1, "lr": 5e-4},
    }
    if kind == "ppo":
        data["critic"] = {"zero_stage": 3, "num_gpus_per_rank": 1}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return from_dict(OnlineDPOConfig if kind == "online_dpo" else PPOConfig, data)


@needs_layer2(min_gpus=2)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("kind", ["online_dpo", "ppo"])
def test_online_rounds_with_the_nccl_sync(kind, dtype, gpu_ray, model_path, tmp_path) -> None:
    """Rounds of online DPO and PPO with ZeRO-3 trainers and the NCCL broadcast: after every
    sync the sampler's log-probs equal the trainer's within the dtype's tolerance (the sync
    probe checks each sync and stops the round otherwise); the loss stays finite."""
    from rlhf.driver import online_dpo, ppo

    cfg = _gpu_job(kind, tmp_path / "run", model_path, dtype, rounds={"rounds": 2})
    run_dir = (online_dpo if kind == "online_dpo" else ppo).run(cfg)
    synced = [r for r in read_metrics(run_dir) if "sync/logp_max_abs_diff" in r]
    assert len(synced) >= 2
    assert all(r["sync/logp_max_abs_diff"] <= TOLERANCE[dtype] for r in synced), synced
    assert all(math.isfinite(v) for r in synced for k, v in r.items() if k.endswith("loss"))


@needs_layer2(min_gpus=1)
def test_vllm_reference_equals_a_hugging_face_forward(gpu_ray, model_path) -> None:
    """vLLM's CUDA engine scores given tokens as an fp32 Hugging Face forward does."""
    import ray
    import torch

    from actors.group import spawn
    from actors.reference import ReferenceServer
    from rlhf.models.hf import hf_token_logprobs, load_causal_lm
    from rlhf.models.vllm_engine import EngineSettings

    settings = EngineSettings(model=model_path, dtype="float32", gpu_memory_utilization=0.2)
    server = spawn(ReferenceServer, settings, num_cpus=1, num_gpus=1)
    sequences = [[1, 5, 6, 7, 8, 9], [1, 10, 11, 12], [1, 5, 6, 13, 14, 15, 16, 2]]
    try:
        served = ray.get(server.token_logprobs.remote(sequences))
    finally:
        ray.kill(server)
    expected = hf_token_logprobs(load_causal_lm(model_path).to("cuda").eval(), sequences)
    for got, want in zip(served, expected, strict=True):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)


@needs_layer2(min_gpus=1)
def test_colocated_roles_sleep_and_memory_does_not_grow(gpu_ray, model_path, tmp_path) -> None:
    """Trainer, samplers and reference share one GPU (``ray.colocate``) with
    ``sleep_when_idle``: the job runs its rounds, and the GPU memory the job holds after each
    round does not grow from the second round on (a leak would)."""
    from rlhf.driver import online_dpo

    sleepy = {"sleep_when_idle": True, "num_gpus": 0.3, "gpu_memory_utilization": 0.2}
    cfg = _gpu_job(
        "online_dpo",
        tmp_path / "run",
        model_path,
        "bfloat16",
        rounds={"rounds": 4},
        trainer={"num_gpus_per_rank": 0.4},
        samplers={"engine": sleepy},
        reference={"engine": sleepy},
        ray={"colocate": [["trainer", "samplers", "reference"]]},
    )
    used = []

    def after_round(phase, state) -> None:  # a phase hook of the online loop
        if phase == "sync":
            import torch

            free, total = torch.cuda.mem_get_info()
            used.append(total - free)

    run_dir = online_dpo.run(cfg, hooks=[after_round])
    assert [r["round"] for r in read_metrics(run_dir) if "eval/reward/mean" in r] == [0, 1, 2, 3]
    assert len(used) >= 3
    assert max(used[1:]) <= used[1] * 1.05 + 64 * 2**20, used  # 5% + 64 MiB of noise


@needs_layer2(min_gpus=2)
def test_vllm_weight_transfer_api_takes_our_state_dict(gpu_ray, model_path) -> None:
    """vLLM 0.32's own weight transfer (``WeightTransferConfig(backend="nccl")``,
    ``init_weight_transfer_engine`` / ``update_weights``) loads the trainer's gathered state
    dict under our Hugging Face names: the engine then scores as the new weights do.

    The check whether it serves our layout (names, tied weights, dtypes) before it can become
    a ``samplers.sync`` option; until this has run on GPUs our broadcast is the GPU path.
    """
    import ray
    import torch
    from vllm.distributed.weight_transfer.base import WeightSource  # noqa: F401 (CUDA build)

    from rlhf.models.hf import hf_token_logprobs, load_causal_lm

    @ray.remote(num_gpus=1)
    class Engine:
        def __init__(self, path: str) -> None:
            from vllm import LLM
            from vllm.config import WeightTransferConfig

            self.llm = LLM(
                model=path,
                dtype="float32",
                gpu_memory_utilization=0.2,
                weight_transfer_config=WeightTransferConfig(backend="nccl"),
            )

        # What vLLM's RayVLLMWeightSyncClient calls on an engine actor: the LLM's own methods.
        def init_weight_transfer_engine(self, request) -> None:
            self.llm.init_weight_transfer_engine(request)

        def start_weight_update(self) -> None:
            self.llm.start_weight_update()

        def update_weights(self, request) -> None:
            self.llm.update_weights(request)

        def finish_weight_update(self) -> None:
            self.llm.finish_weight_update()

        def score(self, sequences):
            from vllm import SamplingParams, TokensPrompt

            params = SamplingParams(max_tokens=1, prompt_logprobs=0)
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params)
            return [
                [next(iter(p.values())).logprob for p in out.prompt_logprobs[1:]] for out in outs
            ]

    engine = Engine.remote(model_path)
    model = load_causal_lm(model_path).to("cuda")
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)  # new weights the engine must take
    pytest.importorskip("vllm.distributed.weight_transfer.nccl_engine")
    from vllm.distributed.weight_transfer.base import ModuleSource
    from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerInitInfo,
        NCCLTrainerWeightTransferEngine,
    )

    from rlhf.models.weight_broadcast import node_address
    from tests.gpu.conftest import free_port

    info = NCCLTrainerInitInfo(
        rank=0, master_address=node_address(), master_port=free_port(), world_size=2
    )
    client = RayVLLMWeightSyncClient(engine)
    sender = NCCLTrainerWeightTransferEngine.trainer_init(
        info, client=client, source=ModuleSource(model)
    )
    sender.send_weights()
    sequences = [[1, 5, 6, 7, 8, 9], [1, 10, 11, 12, 2]]
    served = ray.get(engine.score.remote(sequences))
    expected = hf_token_logprobs(model.eval(), sequences)
    for got, want in zip(served, expected, strict=True):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)
