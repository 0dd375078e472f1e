"""Mistakes a user can fix are one line from ``rlhf``, found before Ray starts; ``--verbose``
shows the traceback."""

import json

import pytest

from rlhf.cli import build_parser, main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.models.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("model") / "sft")


def _one_line(*argv: str) -> str:
    """The message ``rlhf ARGV`` exits with (and checks that it is one or two lines)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    message = exit_info.value.code
    assert isinstance(message, str) and len(message.splitlines()) <= 2, message
    return message


def _config(tmp_path, text: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _dpo(tmp_path, model_dir, data_path, output_dir=None) -> str:
    output_dir = output_dir or tmp_path / "run"
    return _config(
        tmp_path,
        f"algorithm: dpo\noutput_dir: {output_dir}\nmodel: {{path: {model_dir}}}\n"
        f"data: {{path: {data_path}, cache_dir: {tmp_path / 'cache'}, max_prompt_length: 8, "
        "max_length: 16}\n",
    )


def test_config_file_mistakes_are_one_line(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert _one_line("train", str(missing)) == (
        f"rlhf train: config error: config file {missing} does not exist"
    )
    bad = _config(tmp_path, "algorithm: dpo\nloss:\n  beta: [0.1,\n", "bad.yaml")
    message = _one_line("train", bad)
    assert message.startswith(f"rlhf train: config error: {bad}:4: not valid YAML: ")
    listed = _config(tmp_path, "- algorithm: dpo\n", "list.yaml")
    assert _one_line("train", listed) == (
        f"rlhf train: config error: {listed}: the top level must be a mapping of sections "
        "(key: value), not a list"
    )
    assert _one_line("train", "configs/dpo.yaml", "loss.beta=[0.1,") == (
        "rlhf train: config error: override 'loss.beta=[0.1,': the value is not valid YAML "
        "(while parsing a flow node, expected the node content, but found '<stream end>'); "
        "quote it to pass a string"
    )


def test_verbose_shows_the_traceback_before_or_after_the_command(tmp_path):
    from rlhf.config import ConfigError

    missing = str(tmp_path / "nope.yaml")
    for argv in (["--verbose", "train", missing], ["train", missing, "--verbose"]):
        assert build_parser().parse_args(argv).verbose
        with pytest.raises(ConfigError, match="does not exist"):
            main(argv)
    assert not build_parser().parse_args(["train", missing]).verbose


def test_data_and_run_directory_mistakes_are_one_line_before_ray(tmp_path, model_dir):
    import ray

    ray_was_up = ray.is_initialized()  # by an earlier test's session fixture, in a full run

    missing = tmp_path / "none.jsonl"
    assert _one_line("train", _dpo(tmp_path, model_dir, missing)) == (
        f"rlhf train: data error: data.path: {missing}: no such file"
    )
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    assert _one_line("train", _dpo(tmp_path, model_dir, folder)) == (
        f"rlhf train: data error: data.path: {folder} is a directory; give the preference "
        "file in it"
    )
    rows = [{"prompt": "w1 w2", "chosen": "w3", "rejected": "w4"}, {"prompt": "w1", "chosen": "w3"}]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert _one_line("train", _dpo(tmp_path, model_dir, data)).startswith(
        f"rlhf train: data error: {data} line 2, field 'rejected': "
    )
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert _one_line("train", _dpo(tmp_path, model_dir, data, a_file)) == (
        f"rlhf train: run directory error: output_dir {a_file} is a file, not a directory: "
        "set output_dir to a directory"
    )
    assert ray.is_initialized() == ray_was_up  # the mistakes stopped the run before Ray


def test_model_and_device_mistakes_are_one_line_before_ray(tmp_path, model_dir):
    import ray
    import torch

    ray_was_up = ray.is_initialized()  # by an earlier test's session fixture, in a full run

    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "w1", "chosen": "w2", "rejected": "w3"}) + "\n")
    message = _one_line("train", _dpo(tmp_path, tmp_path / "no_model", data))
    assert message.startswith(f"rlhf train: config error: model.path: {tmp_path / 'no_model'} ")
    if not torch.cuda.is_available():
        cuda = ("device=cuda", "trainer.num_gpus_per_rank=1")
        assert _one_line("train", _dpo(tmp_path, model_dir, data), *cuda).startswith(
            "rlhf train: config error: device: cuda, but this machine has no CUDA GPU"
        )
    assert ray.is_initialized() == ray_was_up  # the mistakes stopped the run before Ray


def test_an_empty_config_and_skipped_rows_are_told_before_ray(tmp_path, model_dir, capsys):
    import ray

    ray_was_up = ray.is_initialized()  # by an earlier test's session fixture, in a full run

    empty = _config(tmp_path, "", "empty.yaml")
    assert _one_line("train", empty) == (
        f"rlhf train: config error: {empty}: data: path is required: a .parquet or .jsonl "
        "preference file"
    )
    rows = [{"prompt": "w1 w2", "chosen": "w3", "rejected": "w4"}, {"prompt": "w1", "chosen": "w3"}]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    main(["train", _dpo(tmp_path, model_dir, data), "data.on_bad_row=skip", "--dry-run"])
    printed = capsys.readouterr().out
    assert f"{data}: kept 1 of 2 rows\n  skipped 1 row(s): " in printed  # when read, before Ray
    assert "nothing was started or trained (--dry-run)" in printed
    assert ray.is_initialized() == ray_was_up
