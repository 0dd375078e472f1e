"""The ``rlhf`` command. Argument parsing only: each subcommand hands a config to a job."""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from rlhf import logs
from rlhf.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _add_config_args(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "config", nargs="?", default=default, help=f"YAML config (default: {default})"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sampling.n=8")


def _add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check config, model, data and resources, print the plan, and exit without a run",
    )


def _split_config(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """Lets the config file be omitted: ``rlhf demo sampling.n=2`` uses the default file."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:
        overrides.insert(0, config)
        config = args.default_config
    if config is not None and not Path(config).exists() and (CONFIGS / config).exists():
        config = str(CONFIGS / config)
    return config, overrides


def cmd_build(args: argparse.Namespace) -> None:
    from rlhf.task import build_tiny_model

    path = build_tiny_model(force=args.force)
    print(path)


def cmd_sample(args: argparse.Namespace) -> None:
    from rlhf.driver import sample

    config, overrides = _split_config(args)
    cfg = load_config(sample.SampleJobConfig, config, overrides)
    if args.dry_run:
        _dry_run_sampling(cfg, f"rlhf sample {config}")
        return
    sample.run(cfg)


def _dry_run_sampling(cfg, title: str) -> None:
    """``--dry-run`` of ``rlhf sample`` and ``rlhf make-data`` (``rlhf.driver.plan``)."""
    from rlhf.driver import plan

    plan.dry_run(cfg, plan.sampling_job_stages, plan.sampling_job_schedule, title)


def cmd_demo(args: argparse.Namespace) -> None:
    """Online DPO on the embedded task; a fresh run each time (``--resume`` continues one).

    The previous demo run in ``output_dir`` is replaced; a directory that holds no run of
    this project is never deleted (``rlhf.run_dir.clear_for_fresh_run``).
    """
    if not args.resume and not args.dry_run:
        config, overrides = _split_config(args)
        import yaml

        from rlhf.config import apply_overrides
        from rlhf.run_dir import clear_for_fresh_run

        raw = apply_overrides(yaml.safe_load(Path(config).read_text()) or {}, overrides)
        clear_for_fresh_run(Path(raw.get("output_dir", "runs/demo")).expanduser())
    cmd_train(args)


def cmd_train(args: argparse.Namespace) -> None:
    import importlib

    from rlhf.config import apply_overrides, read_config_file
    from rlhf.driver.loops import BUILTIN_LOOPS, get_loop

    config, overrides = _split_config(args)
    raw = read_config_file(config) if config else {}
    algorithm = apply_overrides(raw, overrides).get("algorithm", "dpo")
    for module in BUILTIN_LOOPS:
        importlib.import_module(module)
    from rlhf.algorithms import PluginLoadError, UnknownNameError

    try:
        loop = get_loop(algorithm)
    except PluginLoadError:
        raise
    except (UnknownNameError, ImportError, TypeError) as error:  # unknown name, bad import path
        raise ConfigError(f"{config or 'command line'}: algorithm: {error}") from None
    cfg = load_config(loop.metadata["config"], config, overrides)
    if args.dry_run:
        from rlhf.driver.plan import dry_run

        title = f"rlhf {args.command} {config or ''} (algorithm {algorithm})"
        dry_run(cfg, loop.metadata.get("stages"), loop.metadata.get("schedule"), title)
        return
    loop(cfg, resume=args.resume)


def cmd_plugins(args: argparse.Namespace) -> None:
    """Every registered algorithm piece, built-in or from a plugin, with where it came from."""
    from rlhf.plugins import all_registries

    for registry in all_registries():
        print(f"{registry.kind}  ({registry.expected_signature})")
        for entry in registry.items():
            print(f"  {entry.name:<16} {entry.origin}")


def cmd_make_data(args: argparse.Namespace) -> None:
    from rlhf.driver import make_data

    config, overrides = _split_config(args)
    cfg = load_config(make_data.MakeDataConfig, config, overrides)
    if args.dry_run:
        _dry_run_sampling(cfg, f"rlhf make-data {config}")
        return
    make_data.run(cfg)


JOB_COMMANDS = ("submit", "status", "logs", "stop")


def cmd_submit(args: argparse.Namespace) -> None:
    """``rlhf train`` as a job on a Ray cluster; follows its logs unless ``--no-wait``."""
    from rlhf.cluster import jobs

    config, overrides = _split_config(args)
    submission = jobs.Submission(
        config,
        overrides,
        resume=args.resume,
        working_dir=args.working_dir,
        pip=args.pip,
        py_modules=args.py_modules,
        env_vars=jobs.parse_env_vars(args.env),
        runtime_env=jobs.load_runtime_env(args.runtime_env),
        submission_id=args.submission_id,
    )
    for note in jobs.submission_notes(submission):
        print(f"note: {note}", file=sys.stderr)
    client = jobs.connect(args.address)
    job_id = jobs.submit(client, submission)
    if args.no_wait:
        print(job_id)
        return
    print(f"submitted {job_id} to {args.address}: {submission.entrypoint()}", file=sys.stderr)
    _follow(client, args.address, job_id)


def _follow(client, address: str, job_id: str) -> None:
    from rlhf.cluster import jobs

    try:
        jobs.stream_logs(client, job_id)
    except KeyboardInterrupt:
        sys.exit(
            f"\nstopped following {job_id}; it keeps running (rlhf stop {job_id} --address {address})"
        )
    status = jobs.wait(client, job_id)
    if status != "SUCCEEDED":
        sys.exit(f"rlhf: job {job_id} {status} (rlhf status {job_id} --address {address})")


def cmd_status(args: argparse.Namespace) -> None:
    from rlhf.cluster import jobs

    print(jobs.describe(jobs.connect(args.address), args.address, args.job_id))


def cmd_logs(args: argparse.Namespace) -> None:
    from rlhf.cluster import jobs

    client = jobs.connect(args.address)
    if args.follow:
        jobs.stream_logs(client, args.job_id)
    else:
        print(client.get_job_logs(args.job_id), end="")


def cmd_stop(args: argparse.Namespace) -> None:
    from rlhf.cluster import jobs

    client = jobs.connect(args.address)
    asked = client.stop_job(args.job_id)
    status = jobs.wait(client, args.job_id, timeout_s=60) if asked else "already ended"
    print(f"{args.job_id}: {status}")


def _add_job_args(parser: argparse.ArgumentParser, job_id: bool = True) -> None:
    from rlhf.cluster.jobs import default_address

    if job_id:
        parser.add_argument("job_id", help="the id rlhf submit printed (raysubmit_...)")
    parser.add_argument(
        "--address",
        default=default_address(),
        help="the cluster's Jobs API, http://HEAD:8265 (default: $RAY_ADDRESS or %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build (or reuse) the embedded tiny model and print its path")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("demo", help="the README's main job: online DPO on the embedded task")
    _add_config_args(p, str(CONFIGS / "demo.yaml"))
    _add_dry_run(p)
    p.add_argument("--resume", action="store_true", help="continue the last demo run")
    p.set_defaults(func=cmd_demo, default_config=str(CONFIGS / "demo.yaml"))

    p = sub.add_parser("plugins", help="list losses, estimators, rewards, ... and their origin")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("sample", help="sample the model on held-out prompts, with rewards")
    _add_config_args(p, str(CONFIGS / "sample.yaml"))
    _add_dry_run(p)
    p.set_defaults(func=cmd_sample, default_config=str(CONFIGS / "sample.yaml"))

    p = sub.add_parser("train", help="train with the algorithm the config names (dpo, ...)")
    _add_config_args(p, None)
    _add_dry_run(p)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in output_dir from its checkpoint"
    )
    p.set_defaults(func=cmd_train, default_config=None)

    p = sub.add_parser(
        "make-data", help="sample K completions per prompt, label with the reward, write Parquet"
    )
    _add_config_args(p, str(CONFIGS / "make_data.yaml"))
    _add_dry_run(p)
    p.set_defaults(func=cmd_make_data, default_config=str(CONFIGS / "make_data.yaml"))

    p = sub.add_parser("submit", help="run `rlhf train CONFIG ...` on a Ray cluster (Jobs API)")
    _add_config_args(p, None)
    _add_job_args(p, job_id=False)
    p.add_argument("--resume", action="store_true", help="pass --resume to rlhf train")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--working-dir", help="directory uploaded as the job's (default: this one)")
    p.add_argument("--pip", action="append", default=[], help="package Ray installs for the job")
    p.add_argument(
        "--py-modules", action="append", default=[], help="local package or wheel to upload"
    )
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for driver and actors")
    p.add_argument("--runtime-env", help="YAML/JSON Ray runtime environment to start from")
    p.add_argument("--submission-id", help="the job's id (default: Ray picks one)")
    p.set_defaults(func=cmd_submit, default_config=None)

    p = sub.add_parser("status", help="a submitted job's status and where its actors ran")
    _add_job_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="a submitted job's logs")
    _add_job_args(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a submitted job")
    _add_job_args(p)
    p.set_defaults(func=cmd_stop)
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show tracebacks with errors, and the libraries' and actors' output on the console "
        "(default: in the run directory's logs/)",
    )
    for p in sub.choices.values():  # also after the command; SUPPRESS keeps the top level's
        p.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logs.configure(verbose=args.verbose)
    try:
        args.func(args)
        if argv is None:  # the command's own process, which exits next
            # Python's exit runs a full garbage collection over every object torch and the
            # other libraries made (1-3 s on 2 busy cores); frozen, they are left to the OS.
            gc.freeze()
    except Exception as error:
        kind = _user_error_kind(error)
        if kind is None and args.command in JOB_COMMANDS:  # the Jobs API's errors
            kind = type(error).__name__
        if kind is None or args.verbose:
            raise
        sys.exit(f"rlhf {args.command}: {kind}: {error}")


# Errors a user can fix, shown as one line (``--verbose``: with the traceback); found in
# ``sys.modules``, because importing their modules here would pull in torch and ray. An error
# of a module not imported cannot have been raised.
USER_ERRORS = (
    ("rlhf.config", "ConfigError", "config error"),
    ("rlhf.algorithms.registry", "PluginLoadError", "plugin error"),
    ("rlhf.data.errors", "DataError", "data error"),
    ("rlhf.run_dir", "RunDirectoryError", "run directory error"),
    ("rlhf.driver.setup", "RunDirectoryError", "run directory error"),
    ("rlhf.driver.checks", "TrainingDivergedError", "training stopped"),
    ("rlhf.driver.online_loop", "NoTrainingDataError", "training stopped"),
)


def _user_error_kind(error: Exception) -> str | None:
    """What kind of user-fixable error ``error`` is (``config error``, ...), or None."""
    for module, name, kind in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return kind
    return None


if __name__ == "__main__":
    main()
