"""The start-up's collector settings (trainer/heap.py): no automatic collections while loading, garbage
collected and the survivors frozen at the end, the collector back as it was."""

import gc
import weakref

import pytest

from tunecli.trainer import heap


class _Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def _unfrozen_after():
    yield
    gc.unfreeze()
    gc.enable()


def test_start_up_parks_the_collector_and_freezes_only_survivors():
    kept = _Node()
    with heap.start_up():
        assert not gc.isenabled()
        dropped = _Node()
        dropped_ref = weakref.ref(dropped)
        del dropped
    assert gc.isenabled()
    assert dropped_ref() is None, "garbage made during start-up was frozen instead of collected"
    assert gc.get_freeze_count() > 0
    assert all(o is not kept for o in gc.get_objects()), "a survivor is still walked by collections"


def test_start_up_restores_the_collector_and_freezes_nothing_when_setup_fails():
    with pytest.raises(RuntimeError), heap.start_up():
        heap.settle()  # as the vllm engine does before it starts
        raise RuntimeError("setup failed")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_start_up_leaves_a_disabled_collector_disabled():
    gc.disable()
    with heap.start_up():
        pass
    assert not gc.isenabled()


def test_settle_spares_later_collections_the_frozen_objects():
    gc.unfreeze()
    gc.collect()
    before = len(gc.get_objects())
    heap.settle()
    assert len(gc.get_objects()) < before // 10


def test_release_hands_the_frozen_objects_back():
    with heap.start_up():
        pass
    assert gc.get_freeze_count() > 0
    heap.release()
    assert gc.get_freeze_count() == 0
