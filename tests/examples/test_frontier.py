"""The frontier example's config: every run it would start is a valid job with its knob set."""

import importlib
import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "examples" / "frontier" / "frontier.yaml"


def _frontier():
    spec = importlib.util.spec_from_file_location("frontier", SPEC.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_frontier_run_is_a_valid_config_with_its_knob(tmp_path, monkeypatch):
    from rlhf.driver.loops import BUILTIN_LOOPS

    for name in BUILTIN_LOOPS:
        importlib.import_module(name)
    monkeypatch.chdir(REPO)  # the spec names configs relative to the project root
    frontier = _frontier()
    spec = yaml.safe_load(SPEC.read_text())
    seen = set()
    for name, algo in spec["algorithms"].items():
        assert len(algo["values"]) >= 3, name  # a frontier needs several points
        for value in algo["values"]:
            loop, cfg = frontier.job(name, algo, value, spec, tmp_path, tmp_path / "pairs.parquet")
            assert cfg.algorithm == name
            section, key = algo["knob"].split(".")
            assert getattr(getattr(cfg, section), key) == value
            assert Path(cfg.output_dir).parent == tmp_path
            seen.add(cfg.output_dir)
    assert len(seen) == sum(len(a["values"]) for a in spec["algorithms"].values())
