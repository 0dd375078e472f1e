"""Starting a preference-training run: its directory, its data tables, its trainer group."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray

from rlhf.cluster.colocation import check_groups, group_name, group_strategy, merged_bundles
from rlhf.cluster.resources import Role, actor_role, engine_roles, trainer_role
from rlhf.config import ConfigError, dump_config
from rlhf.data.cache import cache_key, load_cached, model_fingerprint, save_cached
from rlhf.data.errors import DataError
from rlhf.data.io import check_data_file
from rlhf.data.loader import split_by_prompt
from rlhf.data.prepare import load_preferences
from rlhf.data.table import report_of
from rlhf.driver.preference_training import add_reference_logps
from rlhf.logs import start_job_logs
from rlhf.run_dir import RunDirectoryError, mark_run_dir
from rlhf.schema import reference_backend

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

__all__ = ["RunDirectoryError", "open_run"]  # RunDirectoryError: raised by open_run


def open_run(cfg: Any, resume: bool) -> Path:
    """Creates (or, with ``resume``, reopens) the run directory and writes the resolved config.

    From here on the libraries' records and the actors' output go to ``<run_dir>/logs/``
    (``rlhf.logs.start_job_logs``; the console keeps them with ``--verbose``).
    """
    run_dir = Path(cfg.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(
            f"output_dir {run_dir} is a file, not a directory: set output_dir to a directory"
        )
    if (run_dir / "metrics.jsonl").exists() and not resume:
        raise RunDirectoryError(
            f"{run_dir} already holds a run: pass --resume to continue it, "
            f"or set output_dir to a new directory"
        )
    mark_run_dir(run_dir)  # only a marked directory may be replaced by a fresh run
    dump_config(cfg, run_dir / ("config.resumed.yaml" if resume else "config.yaml"))
    start_job_logs(run_dir)
    return run_dir


def default_table_cache() -> Path:
    """Where tokenized tables with reference log-probs are cached between runs."""
    from rlhf.task import default_cache_dir

    return Path(default_cache_dir()) / "tables"


@dataclass
class PreparedTable:
    """A tokenized preference table and its cache key; from the cache, it has its
    ``ref_logps`` already (``cached``), else :func:`add_reference_tables` adds them."""

    key: str
    table: pa.Table
    cached: bool


def read_preference_tables(
    cfg: Any, model_path: str
) -> tuple[list[PreparedTable | None], PreTrainedTokenizerBase]:
    """Train and held-out tables (None where there is no file), tokenized, plus the tokenizer.

    Runs before Ray starts, so a data error (:class:`DataError`: file, row, field) costs
    seconds. A table comes from the cache when the same model files, data file and settings
    were seen before (see :func:`table_settings` and ``rlhf.data.cache.model_fingerprint``);
    each file's report is printed either way, before training.
    """
    from rlhf.models.tokenizer import load_tokenizer

    paths = [cfg.data.path, cfg.data.eval_path]
    for key_name, path in zip(("path", "eval_path"), paths, strict=True):
        if path is not None:
            try:
                check_data_file(path)
            except DataError as error:
                raise DataError(f"data.{key_name}: {error}") from None
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)  # pad: EOS if none
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_table_cache()
    model = model_fingerprint(model_path)
    context = scoring_context(cfg, model_path)
    settings = {**table_settings(cfg), "context_length": context}
    prepared: list[PreparedTable | None] = []
    for path in paths:
        if path is None:
            prepared.append(None)
            continue
        key = cache_key(model, path, settings)
        table = load_cached(cache_dir, key)
        cached = table is not None
        if cached:
            report = report_of(table)
        else:
            table, report = load_preferences(path, tokenizer, cfg.data, context)
        if report is not None:
            print(report.summary())
        prepared.append(PreparedTable(key, table, cached))
    return prepared, tokenizer


def scoring_context(cfg: Any, model_path: str) -> int | None:
    """The context length sequences must fit: the model's, or the reference engine's
    ``max_model_len`` where that is shorter (None where neither is known)."""
    from rlhf.models.hf import context_length

    limits = [
        context_length(model_path, cfg.model.trust_remote_code),
        cfg.reference.engine.max_model_len,
    ]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def table_settings(cfg: Any) -> dict[str, Any]:
    """Every setting a cached table's tokens and reference log-probs depend on (its cache key,
    with the model's files and the data file)."""
    from rlhf.algorithms import get_preference_loss

    needs_reference = get_preference_loss(cfg.loss.name).metadata.get("needs_reference", True)
    return {
        **cfg.data.table_settings(),
        "reference": needs_reference and reference_backend(cfg),
        "dtype": cfg.model.dtype,
        "trust_remote_code": cfg.model.trust_remote_code,
    }


def add_reference_tables(
    cfg: Any, model_path: str, prepared: list[PreparedTable | None], scope: Any
) -> tuple[pa.Table, pa.Table | None]:
    """Train and held-out tables with reference log-probs (held-out split off the train table
    by ``data.eval_fraction`` when there is no eval file).

    The reference server starts only when a table missed the cache (owned by ``scope``, and
    killed before returning to free its memory for the trainers); new tables are cached.
    """
    from actors.group import wait_started
    from rlhf.algorithms import get_preference_loss

    needs_reference = get_preference_loss(cfg.loss.name).metadata.get("needs_reference", True)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_table_cache()
    server = None
    tables = []
    for item in prepared:
        if item is None or item.cached:
            tables.append(item and item.table)
            continue
        table = item.table
        if needs_reference:
            if server is None:
                server = scope.own(start_reference(cfg, model_path))
                wait_started({"reference": server}, cfg.ray.start_timeout_s)
            table = add_reference_logps(
                server, table, cfg.reference.chunk_size, cfg.ray.call_timeout_s
            )
        save_cached(cache_dir, item.key, table)
        tables.append(table)
    if server is not None:
        ray.kill(server)  # free its memory before the trainers start
    train, held_out = tables
    if held_out is None and cfg.data.eval_fraction > 0:
        train, held_out = split_by_prompt(train, cfg.data.eval_fraction)
    return train, held_out


def online_roles(cfg: Any) -> list[Role]:
    """What an online job holds at once: trainer ranks, sampler engines, reference (none when
    the samplers serve it, ``reference.backend: base``), reward.

    For ``ray_session(cfg.ray, online_roles(cfg))``; a job with more roles adds them (PPO:
    ``trainer_role("critic", cfg.critic)``).
    """
    served = reference_backend(cfg) == "base"
    return [
        trainer_role("trainer", cfg.trainer),
        *engine_roles("samplers", cfg.samplers.engine, cfg.samplers.num_engines),
        *([] if served else engine_roles("reference", cfg.reference.engine)),
        actor_role("reward", cfg.reward.num_cpus, cfg.reward.num_gpus, cfg.reward.resources),
    ]


TRAINER_ROLES = ("trainer", "critic")


def check_colocation(cfg: Any, roles: list[Role]) -> None:
    """Raises ConfigError for ``ray.colocate`` groups or ``sleep_when_idle`` engines the job's
    ``roles`` cannot honour (see ``rlhf.cluster.colocation``); called by the online configs.

    An engine may sleep only where vLLM has a sleep mode (GPUs: vLLM's CPU build raises "Sleep
    mode is not supported on current platform"), only with the vLLM backend, and only when it
    shares a colocation group with a trainer, whose training is what its sleep makes room for.
    """
    check_groups(cfg.ray.colocate, roles)
    partners = {name: set(group) for group in cfg.ray.colocate for name in group}
    engines = [("samplers", cfg.samplers.engine), ("reference", cfg.reference.engine)]
    for name, engine in engines:
        if not engine.sleep_when_idle:
            continue
        key = f"{name}.engine.sleep_when_idle"
        if cfg.device == "cpu":
            raise ConfigError(
                f"{key}: vLLM's CPU build has no sleep mode (LLM.sleep needs a GPU); set it "
                "false, or run on GPUs with device: cuda"
            )
        if name == "reference" and reference_backend(cfg) != "vllm":
            raise ConfigError(f"{key} needs reference.backend: vllm (the hf backend cannot sleep)")
        if not partners.get(name, set()) & set(TRAINER_ROLES):
            raise ConfigError(
                f"{key}: the engine sleeps to free the GPU it shares with trainers, but {name} is "
                f"in no ray.colocate group with {' or '.join(TRAINER_ROLES)}; add one "
                f"(e.g. ray.colocate: [[trainer, {name}]]) or set it false"
            )


def place_colocated(cfg: Any, roles: list[Role], scope: Any) -> dict[str, Any]:
    """One ``SharedPlacement`` per ``ray.colocate`` group, by role name (owned by ``scope``).

    Start these before the roles' actors; pass ``placements.get(role)`` to their start calls.
    """
    from actors.group import SharedPlacement

    by_name = {role.name: role for role in roles}
    placements: dict[str, Any] = {}
    for group in cfg.ray.colocate:
        members = [by_name[name] for name in group]
        shared = scope.own(
            SharedPlacement(merged_bundles(members), group_strategy(members), group_name(members))
        )
        placements.update(dict.fromkeys(group, shared))
    return placements


def sleeping_engines(cfg: Any, samplers: list, reference: Any) -> list:
    """The engine actors that sleep while the trainers train (``engine.sleep_when_idle``)."""
    sleepers = list(samplers) if cfg.samplers.engine.sleep_when_idle else []
    return sleepers + ([reference] if cfg.reference.engine.sleep_when_idle else [])


def offline_stages(cfg: Any) -> tuple[list[Role], list[Role]]:
    """An offline job's two stages: the reference server (freed once the tables have their
    log-probs), then the trainer ranks. For ``ray_session(cfg.ray, *offline_stages(cfg))``."""
    return engine_roles("reference", cfg.reference.engine), [trainer_role("trainer", cfg.trainer)]


def start_reference(cfg: Any, model_path: str, shared: Any = None):
    """The reference server of the config (vLLM or Hugging Face backend).

    ``shared``: a colocation group's ``SharedPlacement`` (the server in bundle 0), or None.
    """
    from actors.group import spawn
    from actors.reference import ReferenceServer
    from rlhf.driver.common import in_bundle

    engine = cfg.reference.engine
    return spawn(
        ReferenceServer,
        engine.settings(cfg.model, model_path, cfg.seed),
        reference_backend(cfg),
        num_cpus=engine.num_cpus,
        num_gpus=engine.num_gpus,
        resources=engine.resources,
        env_vars=cfg.ray.env_vars,
        **in_bundle(shared, 0),
    )


def wait_for_roles(cfg: Any, roles: dict[str, Any]) -> None:
    """Waits, at most ``ray.start_timeout_s``, until the started ``roles`` (role name -> actor,
    actors or group) are up; an error names those still starting. A DeepSpeed op build lock
    that a killed build left (on this node) is reported at once, and in that error."""
    from actors.group import wait_started
    from rlhf.models.torch_extensions import extensions_dir, stale_lock_message

    stale = stale_lock_message(extensions_dir())
    if stale:
        log.warning(stale)
    wait_started(roles, cfg.ray.start_timeout_s, f"; {stale}" if stale else "")


def start_trainers(cfg: Any, model_path: str, shared: Any = None):
    """The policy trainer group of the config's loss, trainer settings and device.

    ``shared``: a colocation group's ``SharedPlacement`` (rank i in bundle i), or None.
    """
    from actors.trainer import start_policy_trainers

    return start_policy_trainers(
        model_path,
        cfg.trainer,
        cfg.loss.name,
        cfg.loss.beta,
        cfg.loss.options,
        device=cfg.device,
        shared=shared,
        load=cfg.model.for_trainers(cfg.seed),
    )
