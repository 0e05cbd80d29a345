"""What the server loads at start is left out of the cyclic collector's full collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from mssante import collector


class _Loaded:
    """A container object of the kind a server loads and keeps (a mapper, a directory entry)."""

    def __init__(self, n: int) -> None:
        self.fields = {"n": n}


@pytest.fixture
def settled_afterwards_undone() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("settled_afterwards_undone")
def test_the_loaded_heap_is_out_of_sight_and_young_collections_are_spaced() -> None:
    loaded = [_Loaded(n) for n in range(50_000)]
    visited_before = len(gc.get_objects())  # what a full collection walks
    collector.settle()
    # The instances and their dicts: no longer walked by any collection.
    assert len(gc.get_objects()) < visited_before - 100_000
    assert gc.get_freeze_count() >= 100_000
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD > 700
    assert len(loaded) == 50_000


@pytest.mark.usefixtures("settled_afterwards_undone")
def test_a_frozen_object_let_go_is_still_freed() -> None:
    kept = _Loaded(1)
    gone = weakref.ref(kept)
    collector.settle()
    del kept  # reference counting frees it at once: no collection involved
    assert gone() is None
