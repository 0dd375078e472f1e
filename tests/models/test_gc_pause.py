"""rlhf.models.gc_pause: automatic collection off in the block, as it was afterwards."""

import gc

import pytest

from rlhf.models.gc_pause import collections_paused


@pytest.fixture
def gc_on():
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_paused_in_the_block_and_back_on_after_it_even_after_an_error(gc_on):
    with collections_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), collections_paused():
        raise ValueError("a failed start")
    assert gc.isenabled()


def test_collection_that_was_off_stays_off(gc_on):
    gc.disable()
    with collections_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_as_a_decorator_each_call_pauses_again(gc_on):
    """DeepSpeedModel.__init__ is decorated: every construction pauses, nested ones too."""
    seen = []

    @collections_paused()
    def start(depth: int) -> None:
        seen.append(gc.isenabled())
        if depth:
            start(depth - 1)
        seen.append(gc.isenabled())

    start(1)
    start(0)
    assert seen == [False] * 6
    assert gc.isenabled()
