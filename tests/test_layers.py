"""The textbook layers one by one: every backward against centred differences of its forward,
the two batch-norm backward passes against each other, and stacked parameters."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from knn_cli import layers as L


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d x by centred differences, x changed in place and restored entry by entry."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + h
        plus = f()
        x[index] = saved - h
        minus = f()
        x[index] = saved
        grad[index] = (plus - minus) / (2 * h)
    return grad


def assert_close(analytic: np.ndarray, numeric: np.ndarray) -> None:
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_affine_backward(rng: np.random.Generator) -> None:
    x, W, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    dout = rng.standard_normal((6, 3))

    def loss() -> float:  # L = sum(dout * out), so dL/dout = dout
        return float(np.sum(dout * L.affine_forward(x, W, b)[0]))

    dx, dW, db = L.affine_backward(dout, L.affine_forward(x, W, b)[1])
    for analytic, value in ((dx, x), (dW, W), (db, b)):
        assert_close(analytic, numerical_gradient(loss, value))


@pytest.mark.parametrize("backward", [L.batch_norm_backward, L.batch_norm_backward_by_steps])
def test_batch_norm_backward(backward, rng: np.random.Generator) -> None:
    x = 3.0 + 2.0 * rng.standard_normal((8, 5))
    gamma, beta = rng.uniform(0.5, 2.0, 5), rng.standard_normal(5)
    dout = rng.standard_normal((8, 5))

    def loss() -> float:
        return float(np.sum(dout * L.batch_norm_forward(x, gamma, beta, 1e-5)[0]))

    dx, dgamma, dbeta = backward(dout, L.batch_norm_forward(x, gamma, beta, 1e-5)[1])
    for analytic, value in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        assert_close(analytic, numerical_gradient(loss, value))


def test_the_two_batch_norm_backward_passes_agree(rng: np.random.Generator) -> None:
    x = rng.standard_normal((20, 7)) * 4
    _, cache = L.batch_norm_forward(x, rng.standard_normal(7), rng.standard_normal(7), 1e-12)
    dout = rng.standard_normal((20, 7))
    for compact, by_steps in zip(
        L.batch_norm_backward(dout, cache),
        L.batch_norm_backward_by_steps(dout, cache),
        strict=True,
    ):
        np.testing.assert_allclose(compact, by_steps, rtol=1e-10, atol=1e-12)


def test_batch_norm_training_output_and_statistics(rng: np.random.Generator) -> None:
    x = 5.0 + 3.0 * rng.standard_normal((50, 4))
    gamma, beta = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.0, -1.0, 1.0, 2.0])
    out, cache = L.batch_norm_forward(x, gamma, beta, 1e-12)
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-9)
    np.testing.assert_allclose(cache.mean, x.mean(axis=0))
    np.testing.assert_allclose(cache.var, x.var(axis=0))  # the biased variance, over n
    # Evaluation mode with the batch's own statistics gives the training output.
    again = L.batch_norm_evaluate(x, gamma, beta, cache.mean, cache.var, 1e-12)
    np.testing.assert_allclose(again, out, rtol=1e-12, atol=1e-12)


def test_relu_backward(rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 6))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink
    dout = rng.standard_normal((5, 6))

    def loss() -> float:
        return float(np.sum(dout * L.relu_forward(x)[0]))

    assert_close(L.relu_backward(dout, L.relu_forward(x)[1]), numerical_gradient(loss, x))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_backward(smoothing: float, rng: np.random.Generator) -> None:
    scores, y = rng.standard_normal((7, 10)) * 3, rng.integers(0, 10, 7)
    numeric = numerical_gradient(lambda: L.cross_entropy(scores, y, smoothing), scores)
    assert_close(L.softmax_cross_entropy_backward(scores, y, smoothing), numeric)


def test_label_smoothing_is_cross_entropy_against_the_smoothed_targets(
    rng: np.random.Generator,
) -> None:
    scores, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    targets = np.full((5, 4), 0.1 / 4)
    targets[np.arange(5), y] += 0.9
    log_probs = np.log(L.softmax(scores))
    assert L.cross_entropy(scores, y, 0.1) == pytest.approx(-np.mean((targets * log_probs).sum(1)))


def test_dropout_backward_with_a_fixed_mask(rng: np.random.Generator) -> None:
    x, dout = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))

    def forward() -> tuple[np.ndarray, np.ndarray]:  # the same mask in every pass
        return L.dropout_forward(x, 0.4, np.random.default_rng(7))

    def loss() -> float:
        return float(np.sum(dout * forward()[0]))

    _out, mask = forward()
    assert set(np.unique(mask)) <= {0.0, 1.0 / 0.6}
    assert_close(L.dropout_backward(dout, mask), numerical_gradient(loss, x))


def test_dropout_keeps_the_expected_value(rng: np.random.Generator) -> None:
    """Inverted dropout: units scaled by 1 / (1 - rate), so E[out] = x and evaluation needs
    no scaling."""
    x = np.ones((2000, 50))
    out, mask = L.dropout_forward(x, 0.3, rng)
    assert 0.27 < np.mean(mask == 0) < 0.33
    assert out.mean() == pytest.approx(1.0, abs=0.01)


def test_stacked_parameters_compute_each_variant(rng: np.random.Generator) -> None:
    """The gradient checker's P networks in one pass equal P passes of one network each."""
    x = rng.standard_normal((9, 4))
    W, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5))
    gamma, beta = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    stacked, _ = L.affine_forward(x, W, b[:, None, :])
    stacked, _ = L.batch_norm_forward(stacked, gamma[:, None, :], beta[:, None, :], 1e-12)
    y = rng.integers(0, 5, 9)
    losses = L.cross_entropy(stacked, y)
    for p in range(3):
        one, _ = L.affine_forward(x, W[p], b[p])
        one, _ = L.batch_norm_forward(one, gamma[p], beta[p], 1e-12)
        np.testing.assert_allclose(stacked[p], one, rtol=1e-12, atol=1e-12)
        assert losses[p] == pytest.approx(L.cross_entropy(one, y), rel=1e-12)
