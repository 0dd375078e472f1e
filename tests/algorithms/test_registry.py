"""Registries: signature checks, helpful errors, import paths, built-ins and entry points."""

import importlib.metadata
import pickle
import sys
import textwrap

import pytest
import torch

from rlhf import registry as registry_module  # the entry points' state (rlhf.registry)
from rlhf.algorithms import (
    AdvantageInput,
    PluginLoadError,
    RankedLogps,
    Registry,
    advantage_estimators,
    dpo_loss,
    get_advantage,
    get_preference_loss,
    plackett_luce_loss,
    preference_losses,
    register_preference_loss,
)

# --- a fresh registry per test (no global state) -------------------------------------------------


@pytest.fixture
def losses() -> Registry:
    return Registry("toy_loss", ("logps", "beta"), metadata_defaults={"needs_reference": True})


def good_loss(logps, beta, margin=0.0):
    return logps


def test_register_get_and_call(losses):
    decorated = losses.register("good", paper="x")(good_loss)
    assert decorated is good_loss  # the decorator returns the function unchanged
    entry = losses.get("good")
    assert entry.fn is good_loss and entry("a", 1.0) == "a"
    assert entry.metadata == {"needs_reference": True, "paper": "x"}
    assert entry.needs_reference is True and entry.paper == "x"
    assert entry.module == __name__ and entry.distribution is None
    assert losses.names() == ["good"] and "good" in losses
    [item] = losses.items()
    assert (item.name, item.fn, item.module) == ("good", good_loss, __name__)
    with pytest.raises(AttributeError, match="needs_critic"):
        _ = entry.needs_critic
    with pytest.raises(TypeError):
        entry.metadata["paper"] = "y"  # read-only


def test_entries_pickle():
    entry = get_preference_loss("sigmoid")
    copy = pickle.loads(pickle.dumps(entry))
    assert copy.fn is entry.fn and copy.needs_reference and copy.origin == entry.origin


def test_unknown_name_lists_known_ones(losses):
    for name in ("c", "a", "b"):
        losses.register(name)(good_loss)
    with pytest.raises(KeyError, match="unknown toy_loss 'foo'; known: a, b, c"):
        losses.get("foo")


def test_duplicate_name_names_both_sources(losses):
    losses.register("dup")(good_loss)

    def other_loss(logps, beta):
        return logps

    with pytest.raises(ValueError) as info:
        losses.register("dup")(other_loss)
    message = str(info.value)
    assert f"{__name__}:good_loss" in message
    assert f"{__name__}:test_duplicate_name_names_both_sources.<locals>.other_loss" in message


@pytest.mark.parametrize(
    "source",
    [
        "def f(beta, logps): ...",  # wrong order
        "def f(logits, beta): ...",  # wrong name
        "def f(logps): ...",  # missing
        "def f(logps, beta, margin): ...",  # option without default
        "def f(logps, *, beta): ...",  # keyword-only
    ],
)
def test_wrong_signature_is_a_type_error(losses, source):
    namespace: dict = {"__name__": "my_plugin.losses"}
    exec(source, namespace)
    with pytest.raises(TypeError) as info:
        losses.register("bad")(namespace["f"])
    message = str(info.value)
    assert "my_plugin.losses:f" in message
    assert "fn(logps, beta, **options)" in message


@pytest.mark.parametrize(
    "source",
    [
        "def f(logps, beta): ...",
        "def f(logps, beta, /, margin=1.0): ...",
        "def f(logps, beta, **options): ...",
        "def f(logps, beta, *, top_m=None): ...",
    ],
)
def test_accepted_signatures(losses, source):
    namespace: dict = {}
    exec(source, namespace)
    losses.register("ok")(namespace["f"])


def test_bad_names(losses):
    for name in ("", "pkg.mod:attr"):
        with pytest.raises(ValueError, match="name"):
            losses.register(name)


def test_import_path_lookup(losses):
    entry = losses.get(f"{__name__}:good_loss")
    assert entry.fn is good_loss
    assert entry.metadata == {"needs_reference": True}
    # a registered function found by path keeps its name and metadata
    losses.register("good", paper="x")(good_loss)
    assert losses.get(f"{__name__}:good_loss").name == "good"


def test_import_path_checks_signature_and_existence(losses):
    with pytest.raises(TypeError, match="expected fn"):
        losses.get("os.path:join")  # join(a, *p) is no loss
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        losses.get("no_such_module_xyz:f")
    with pytest.raises(ImportError, match="no_such_attr"):
        losses.get(f"{__name__}:no_such_attr")


# --- the built-in registries ---------------------------------------------------------------------


def test_builtin_preference_losses():
    assert {"sigmoid", "ipo", "hinge", "plackett_luce"} <= set(preference_losses.names())
    torch.manual_seed(0)
    policy, ref = torch.randn(4, 2), torch.randn(4, 2)
    logps = RankedLogps(policy=policy, reference=ref, lengths=torch.ones(4, 2))
    pair = (policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1])
    for name, options in [
        ("sigmoid", {}),
        ("sigmoid", {"label_smoothing": 0.2}),
        ("ipo", {}),
        ("hinge", {}),
    ]:
        expected, _, _ = dpo_loss(*pair, beta=0.3, loss_type=name, **options)
        torch.testing.assert_close(get_preference_loss(name)(logps, 0.3, **options), expected)
    ranked = RankedLogps(torch.randn(4, 3), torch.randn(4, 3), torch.ones(4, 3))
    expected = plackett_luce_loss(ranked.policy, ranked.reference, beta=0.3, top_m=1)
    torch.testing.assert_close(get_preference_loss("plackett_luce")(ranked, 0.3, top_m=1), expected)


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "hinge"])
def test_pair_losses_refuse_rankings(name):
    ranked = RankedLogps(torch.randn(4, 3), torch.randn(4, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match="plackett_luce"):
        get_preference_loss(name)(ranked, 0.1)


def test_builtin_losses_need_a_reference():
    logps = RankedLogps(torch.randn(4, 2), None, torch.ones(4, 2))
    assert get_preference_loss("sigmoid").needs_reference
    with pytest.raises(ValueError, match="reference"):
        get_preference_loss("sigmoid")(logps, 0.1)


def test_builtin_advantage_estimators_declare_a_critic():
    needs = {entry.name: entry.metadata["needs_critic"] for entry in advantage_estimators.items()}
    assert {
        "gae": True,
        "grpo": False,
        "rloo": False,
        "reinforce_pp": False,
    }.items() <= needs.items()
    assert get_advantage("gae").needs_critic is True
    batch = AdvantageInput(
        rewards=torch.ones(4, 3), mask=torch.ones(4, 3), values=None, group_size=2
    )
    for name in ("grpo", "rloo", "reinforce_pp"):
        advantages, returns = get_advantage(name)(batch)
        assert advantages.shape == returns.shape == (4, 3)
    with pytest.raises(ValueError, match="values"):
        get_advantage("gae")(batch)


# --- entry points --------------------------------------------------------------------------------

PLUGIN = """
from rlhf.algorithms import register_preference_loss

@register_preference_loss("{name}", paper="none")
def scaled_margin(logps, beta, scale=1.0):
    return -scale * beta * (logps.policy[:, 0] - logps.policy[:, -1])
"""


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """A real installed-looking distribution 'toy-plugin' with entry points in rlhf.algorithms.

    Returns a function that writes a module and declares entry points; the registries are
    restored after the test.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_plugins_loaded", False)
    monkeypatch.setattr(registry_module, "_loaded_entry_points", set())
    monkeypatch.setattr(preference_losses, "_entries", dict(preference_losses._entries))
    dist_info = tmp_path / "toy_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 1.0\n")
    calls = []

    def install(modules: dict[str, str], entry_points: dict[str, str]):
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            monkeypatch.delitem(sys.modules, module, raising=False)
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (dist_info / "entry_points.txt").write_text(f"[rlhf.algorithms]\n{lines}")
        dist = importlib.metadata.PathDistribution(dist_info)

        def entry_points(**params):
            calls.append(params)
            return dist.entry_points.select(**params)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        return calls

    return install


def test_entry_points_are_loaded_lazily_once(plugin_env):
    calls = plugin_env(
        {"toy_plugin_losses": PLUGIN.format(name="toy_margin")},
        {"toy": "toy_plugin_losses"},
    )
    assert "toy_plugin_losses" not in sys.modules and calls == []
    entry = get_preference_loss("toy_margin")  # the first query loads the entry points
    assert calls == [{"group": "rlhf.algorithms"}]
    assert entry.distribution == "toy-plugin" and entry.module == "toy_plugin_losses"
    assert "toy-plugin" in entry.origin and entry.paper == "none"
    assert entry.needs_reference is True  # the registry's default
    logps = RankedLogps(torch.tensor([[2.0, 0.0]]), None, torch.ones(1, 2))
    assert entry(logps, 0.5, scale=2.0).item() == pytest.approx(-2.0)
    assert "toy_margin" in preference_losses.names()
    get_advantage("gae")  # any registry's query; nothing is loaded twice
    assert len(calls) == 1


def test_entry_point_to_an_object_in_a_module(plugin_env):
    plugin_env(
        {"toy_plugin_obj": PLUGIN.format(name="toy_obj")},
        {"toy": "toy_plugin_obj:scaled_margin"},
    )
    assert get_preference_loss("toy_obj").distribution == "toy-plugin"


def test_failing_entry_point_names_itself_and_its_distribution(plugin_env):
    plugin_env(
        {"toy_plugin_broken": "import no_such_dependency_xyz\n"},
        {"broken": "toy_plugin_broken"},
    )
    with pytest.raises(PluginLoadError) as info:
        get_preference_loss("sigmoid")
    message = str(info.value)
    assert "'broken'" in message and "toy_plugin_broken" in message and "toy-plugin" in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_plugin_duplicating_a_builtin_names_both(plugin_env):
    plugin_env({"toy_plugin_dup": PLUGIN.format(name="sigmoid")}, {"dup": "toy_plugin_dup"})
    with pytest.raises(PluginLoadError) as info:
        preference_losses.names()
    cause = str(info.value.__cause__)
    assert "rlhf.algorithms.preference" in cause and "toy_plugin_dup:scaled_margin" in cause
    assert "toy-plugin" in cause


def test_register_preference_loss_is_the_global_registry(monkeypatch):
    monkeypatch.setattr(preference_losses, "_entries", dict(preference_losses._entries))

    @register_preference_loss("toy_global")
    def toy(logps, beta):
        return logps.policy[:, 0]

    assert get_preference_loss("toy_global").fn is toy


def test_rlhf_plugins_lists_every_builtin_loss_with_its_origin(capsys):
    from rlhf.cli import main

    main(["plugins"])
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("preference_loss")))
    end = lines.index(next(x for x in lines if x.startswith("advantage_estimator")))
    listed = {line.split()[0]: line.split()[1] for line in lines[start + 1 : end]}
    expected = {
        "preference": ["sigmoid", "ipo", "hinge", "plackett_luce"],
        "dpo_variants": ["robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot"]
        + ["aot_unpaired", "apo_zero", "apo_down", "discopop", "rpo"],
        "reference_free": ["sft", "simpo", "cpo", "orpo", "unlikelihood"],
        "kto": ["kto"],
    }
    for module, names in expected.items():
        for name in names:
            assert listed.get(name, "").startswith(f"rlhf.algorithms.{module}:"), (name, listed)


def test_rlhf_plugins_lists_every_preference_loss_with_its_origin(capsys):
    import argparse

    from rlhf.cli import cmd_plugins

    cmd_plugins(argparse.Namespace())
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("preference_loss ")))
    end = next(i for i, x in enumerate(lines) if i > start and not x.startswith("  "))
    listed = {line.split()[0]: line.split()[1] for line in lines[start + 1 : end]}
    expected = {
        "sigmoid", "ipo", "hinge", "plackett_luce", "robust", "exo_pair", "nca_pair", "bco_pair",
        "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "rpo", "simpo",
        "cpo", "orpo", "sft", "kto",
    }  # fmt: skip
    assert expected <= set(listed)
    assert listed["kto"] == "rlhf.algorithms.kto:kto"
    assert listed["simpo"] == "rlhf.algorithms.reference_free:simpo_loss"
    assert all(listed[name] == get_preference_loss(name).origin for name in listed)
