"""Augmentation: the transforms on known images, their draws from a seed, and the fast gather
against the readable version, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from knn_cli.augment import Augmentation, Draws, augment, draw, mirror
from knn_cli.engine.batches import AugmentedBatch, Batch


def numbered_images(n: int = 4) -> np.ndarray:
    return np.arange(n * 3072, dtype=np.float32).reshape(n, 3072) + 1.0  # no pixel is 0


def test_a_shift_moves_every_channel_and_fills_with_zero_or_the_edge() -> None:
    X = numbered_images(2)
    src = X.reshape(2, 3, 32, 32)
    draws = Draws(top=np.array([0, 2]), left=np.array([1, 1]), mirrored=np.zeros(2, bool))
    out = augment(X, Augmentation(translate=1), draws).reshape(2, 3, 32, 32)
    # top 0 of 0..2 with p = 1: the window starts a row above the image, so it moves down
    np.testing.assert_array_equal(out[0, :, 1:, :], src[0, :, :-1, :])
    assert not out[0, :, 0, :].any()
    np.testing.assert_array_equal(out[1, :, :-1, :], src[1, :, 1:, :])  # top 2: moves up
    edge = augment(X, Augmentation(translate=1, padding="edge"), draws).reshape(2, 3, 32, 32)
    np.testing.assert_array_equal(edge[0, :, 0, :], src[0, :, 0, :])


def test_a_mirror_reverses_every_row() -> None:
    X = numbered_images(1)
    draws = Draws(np.zeros(1, int), np.zeros(1, int), np.array([True]))
    out = augment(X, Augmentation(flip=True), draws)
    np.testing.assert_array_equal(out.reshape(3, 32, 32), X.reshape(3, 32, 32)[..., ::-1])
    np.testing.assert_array_equal(mirror(out), X)


def test_draws_follow_the_seed_and_cover_every_choice() -> None:
    augmentation = Augmentation(flip=True, translate=3)
    first = draw(augmentation, 2000, np.random.default_rng(5))
    again = draw(augmentation, 2000, np.random.default_rng(5))
    np.testing.assert_array_equal(first.top, again.top)
    np.testing.assert_array_equal(first.mirrored, again.mirrored)
    assert set(first.top) == set(first.left) == set(range(7))
    assert 0.45 < first.mirrored.mean() < 0.55
    plain = draw(Augmentation(), 10, np.random.default_rng(5))
    assert not plain.top.any() and not plain.mirrored.any()


@pytest.mark.parametrize("edges", [False, True], ids=["inside", "first-and-last-images"])
@pytest.mark.parametrize("translate", [0, 1, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_the_fast_gather_equals_the_readable_augmentation(
    translate: int, flip: bool, edges: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(translate + 10 * flip)
    X = rng.standard_normal((300, 3072)).astype(np.float32)
    augmentation = Augmentation(flip=flip, translate=translate)
    if not edges:  # inside the data set the fast path must serve every batch
        monkeypatch.setattr(AugmentedBatch, "_reference", lambda self: pytest.fail("slow path"))
    for _ in range(5):
        rows = rng.integers(1, 299, 64)
        if edges:  # the first and last images, whose shifts may reach past the data
            rows[:2] = (0, 299)
        draws = draw(augmentation, 64, rng)
        expected = augment(X[rows], augmentation, draws)
        for features in (slice(0, 3072), slice(0, 1536), slice(1536, 3072)):
            batch = AugmentedBatch(X, rows, augmentation, draws)
            np.testing.assert_array_equal(batch.take(features), expected[:, features])
        np.testing.assert_array_equal(
            AugmentedBatch(X, rows, augmentation, draws).whole(), expected
        )


def test_edge_padding_takes_the_readable_path() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 3072)).astype(np.float32)
    augmentation = Augmentation(flip=True, translate=2, padding="edge")
    rows, draws = rng.integers(0, 50, 10), draw(augmentation, 10, rng)
    batch = AugmentedBatch(X, rows, augmentation, draws)
    np.testing.assert_array_equal(
        batch.take(slice(0, 1536)), augment(X[rows], augmentation, draws)[:, :1536]
    )


def test_a_plain_batch_is_its_rows() -> None:
    X = numbered_images(5)
    batch = Batch(X, np.array([3, 1]))
    np.testing.assert_array_equal(batch.whole(), X[[3, 1]])
    np.testing.assert_array_equal(batch.take(slice(10, 20)), X[[3, 1], 10:20])
    assert batch.same_as(Batch(X, np.array([3, 1]))) and not batch.same_as(
        Batch(X, np.array([1, 3]))
    )
