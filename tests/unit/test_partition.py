import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zenfed.data import partition
from zenfed.errors import ZenfedError


def _assert_exact_cover(parts: list[list[int]], n: int) -> None:
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))  # every example exactly once
    assert all(parts)  # no empty participant


labels_st = st.lists(st.sampled_from("abcde"), min_size=8, max_size=200)


@settings(max_examples=40, deadline=None)
@given(labels_st, st.integers(1, 8), st.integers(0, 2**31))
def test_iid_and_quantity_cover_every_example_once(labels: list[str], k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    _assert_exact_cover(partition.iid(len(labels), k, rng), len(labels))
    _assert_exact_cover(partition.quantity(len(labels), k, 0.5, rng), len(labels))


@settings(max_examples=40, deadline=None)
@given(labels_st, st.integers(1, 4), st.integers(0, 2**31))
def test_dirichlet_covers_every_example_once(labels: list[str], k: int, seed: int) -> None:
    parts = partition.dirichlet(labels, k, alpha=5.0, rng=np.random.default_rng(seed))
    _assert_exact_cover(parts, len(labels))


@settings(max_examples=40, deadline=None)
@given(labels_st)
def test_natural_groups_by_label(labels: list[str]) -> None:
    names, parts = partition.natural(labels)
    _assert_exact_cover(parts, len(labels))
    for name, idx in zip(names, parts, strict=True):
        assert {labels[i] for i in idx} == {name}


def test_small_alpha_gives_label_skew() -> None:
    labels = [c for c in "abcd" for _ in range(250)]
    parts = partition.dirichlet(labels, 4, alpha=0.1, rng=np.random.default_rng(0))
    top_share = [
        max(np.unique([labels[i] for i in p], return_counts=True)[1]) / len(p) for p in parts
    ]
    assert np.mean(top_share) > 0.6  # IID would give about 0.25


def test_more_participants_than_examples_is_a_clear_error() -> None:
    with pytest.raises(ZenfedError, match="cannot split 3 examples among 5"):
        partition.iid(3, 5, np.random.default_rng(0))


def test_every_participant_can_get_a_training_and_a_held_out_example() -> None:
    # 80 examples over 10 participants: the first Dir(1) draw leaves someone a single
    # example, which split_heldout cannot split; min_items = 2 draws again
    labels = [c for c in "ab" for _ in range(40)]
    one = partition.dirichlet(labels, 10, alpha=1.0, rng=np.random.default_rng(0))
    assert min(len(p) for p in one) == 1
    two = partition.dirichlet(labels, 10, 1.0, np.random.default_rng(0), min_items=2)
    _assert_exact_cover(two, len(labels))
    assert min(len(p) for p in two) >= 2
    for parts in (
        partition.quantity(40, 15, 0.5, np.random.default_rng(0), min_items=2),
        partition.iid(40, 15, np.random.default_rng(0), min_items=2),
    ):
        _assert_exact_cover(parts, 40)
        assert min(len(p) for p in parts) >= 2
    with pytest.raises(ZenfedError, match="among 25 participants with at least 2 each"):
        partition.iid(40, 25, np.random.default_rng(0), min_items=2)
