"""Every wait of the driver is bounded: no plain ``ray.get`` outside ``rlhf.driver.retry``.

The driver waits on actors through ``bounded_get`` (``ray.call_timeout_s``), which names an
actor that died at once and one that hangs at the bound; a plain ``ray.get`` would wait
forever on a hung rank. The check reads the source, so it also covers code paths no test runs.
"""

import ast
from pathlib import Path

import rlhf.driver

DRIVER = Path(rlhf.driver.__file__).parent


def plain_ray_gets(path: Path) -> list[int]:
    """Lines of ``path`` that call ``ray.get``."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "ray"
    ]


def test_the_driver_waits_on_actors_only_through_bounded_get():
    found = {
        path.name: lines
        for path in sorted(DRIVER.glob("*.py"))
        if path.name != "retry.py" and (lines := plain_ray_gets(path))
    }
    assert found == {}, f"plain ray.get (use rlhf.driver.retry.bounded_get): {found}"


def test_the_check_finds_a_plain_ray_get(tmp_path):
    source = tmp_path / "loop.py"
    source.write_text("import ray\n\n\ndef wait(refs):\n    return ray.get(refs)\n")
    assert plain_ray_gets(source) == [5]
