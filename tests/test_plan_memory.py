"""plan_memory: offsets never overlap for buffers live at the same step."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mochac.passes.plan_memory import LiveBuffer, align, peak_live_bytes, plan_offsets


def assert_valid(buffers, offsets, arena):
    for i, a in enumerate(buffers):
        assert offsets[a.key] % 64 == 0
        assert offsets[a.key] + a.nbytes <= arena
        for b in buffers[i + 1 :]:
            if a.overlaps(b):
                a_end = offsets[a.key] + align(a.nbytes)
                b_end = offsets[b.key] + align(b.nbytes)
                assert a_end <= offsets[b.key] or b_end <= offsets[a.key]


def test_disjoint_lifetimes_share_memory():
    buffers = [LiveBuffer("a", 1000, 0, 1), LiveBuffer("b", 1000, 2, 3)]
    offsets, arena = plan_offsets(buffers)
    assert offsets["a"] == offsets["b"] == 0
    assert arena == align(1000)


def test_overlapping_lifetimes_stack():
    buffers = [LiveBuffer("a", 100, 0, 2), LiveBuffer("b", 200, 1, 3)]
    offsets, arena = plan_offsets(buffers)
    assert arena == align(100) + align(200)
    assert_valid(buffers, offsets, arena)


def test_chain_reaches_peak():
    # A chain where each buffer lives across two steps: peak is two buffers.
    buffers = [LiveBuffer(i, 640, i, i + 1) for i in range(10)]
    offsets, arena = plan_offsets(buffers)
    assert_valid(buffers, offsets, arena)
    assert peak_live_bytes(buffers) == 2 * 640
    assert arena == 2 * 640


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 5000), st.integers(0, 30), st.integers(0, 10)),
        min_size=1,
        max_size=40,
    )
)
def test_random_plans_are_valid(specs):
    buffers = [
        LiveBuffer(i, size, start, start + length)
        for i, (size, start, length) in enumerate(specs)
    ]
    offsets, arena = plan_offsets(buffers)
    assert_valid(buffers, offsets, arena)
    assert arena >= peak_live_bytes(buffers)
    assert arena <= sum(align(b.nbytes) for b in buffers)


def test_peak_counts_simultaneous_bytes():
    rng = random.Random(0)
    buffers = [LiveBuffer(i, rng.randint(1, 999), i % 5, i % 5 + 2) for i in range(30)]
    steps = range(10)
    expected = max(
        sum(align(b.nbytes) for b in buffers if b.start <= s <= b.end) for s in steps
    )
    assert peak_live_bytes(buffers) == expected
