"""The network's operations, each a forward/backward pair, written to be read beside a textbook.

Samples are rows: a batch `x` has shape (n, d). Every forward returns `(out, cache)`, the cache
holding what its backward needs; every backward takes dL/dout and that cache and returns dL/dx
and the parameters' gradients. Outputs are allocated, nothing is written in place.

This module is the reference. The fast engine (`knn_cli/engine/`) computes the same numbers in
reused buffers and is tested against these functions element by element
(`tests/test_engine.py`); the gradient check holds both to numerical differences.

Stacked parameters: the forward passes also take parameters with leading axes -- W of shape
(P, d, m), vectors of shape (P, 1, m) -- and then compute P networks at once, out (P, n, m). The
gradient checker evaluates hundreds of perturbed networks in one call this way, which is why
batch statistics are taken over axis -2 (the rows) and not axis 0. Backward passes take one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# -- affine: out = x W + b ----------------------------------------------------------------------


def affine_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """out = x W + b.

    x (n, d), W (d, m), b (m,) -> out (n, m).
    """
    return x @ W + b, (x, W)


def affine_backward(
    dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dL/dx = dout W^T,  dL/dW = x^T dout,  dL/db = sum over the rows of dout.

    dout (n, m) -> dx (n, d), dW (d, m), db (m,).
    """
    x, W = cache
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


def affine_parameter_gradients(
    dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """dL/dW and dL/db alone: the first layer's input is the data, whose gradient nothing
    reads, and dL/dx costs as much as dL/dW."""
    x, _ = cache
    return x.T @ dout, dout.sum(axis=0)


# -- batch normalization (Ioffe and Szegedy, 2015) ------------------------------------------------


class BatchNormCache(NamedTuple):
    x_hat: np.ndarray  # (n, m) the normalized input
    gamma: np.ndarray  # (m,)
    inv_std: np.ndarray  # (1, m) 1 / sqrt(var + eps)
    mean: np.ndarray  # (m,) the batch's mean and variance, for the moving averages
    var: np.ndarray


def batch_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, BatchNormCache]:
    """Training mode: each unit normalized by the batch's own mean and variance.

        mu = mean_i x_i,   var = mean_i (x_i - mu)^2   (the biased variance, divided by n)
        x_hat = (x - mu) / sqrt(var + eps),   out = gamma x_hat + beta

    x (n, m), gamma (m,), beta (m,) -> out (n, m). The cache also carries mu and var (m,), which
    the network folds into its moving averages for evaluation mode.
    """
    inv_n = 1.0 / x.shape[-2]
    mean = inv_n * x.sum(axis=-2, keepdims=True)
    centred = x - mean
    var = inv_n * np.square(centred).sum(axis=-2, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = centred * inv_std
    out = gamma * x_hat + beta
    return out, BatchNormCache(x_hat, gamma, inv_std, mean[..., 0, :], var[..., 0, :])


def batch_norm_evaluate(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Evaluation mode: the same normalization with fixed statistics (the moving averages), so
    that a sample's output does not depend on the other samples it is evaluated with.

    x (n, m), gamma, beta, mean, var (m,) -> out (n, m).
    """
    inv_std = 1.0 / np.sqrt(var + eps)
    return gamma * ((x - mean) * inv_std) + beta


def batch_norm_backward(
    dout: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradients, in the compact form:

        dL/dgamma = sum_i dout_i x_hat_i,   dL/dbeta = sum_i dout_i
        g = gamma dout   (= dL/dx_hat)
        dL/dx = inv_std (g - mean_i g_i - x_hat mean_i (g_i x_hat_i))

    The two subtracted means are the paths through mu and var: every row's output depends on
    every row's input. `batch_norm_backward_by_steps` derives the same through the graph.

    dout (n, m) -> dx (n, m), dgamma (m,), dbeta (m,).
    """
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    g = gamma * dout
    dx = inv_std * (g - g.mean(axis=0) - x_hat * (g * x_hat).mean(axis=0))
    return dx, (dout * x_hat).sum(axis=0), dout.sum(axis=0)


def batch_norm_backward_by_steps(
    dout: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same gradients, one node of the computation graph at a time, as a derivation goes:
    x -> centred = x - mu -> var -> inv_std -> x_hat = centred inv_std -> out."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    n = dout.shape[0]
    centred = x_hat / inv_std
    dgamma = (dout * x_hat).sum(axis=0)
    dbeta = dout.sum(axis=0)
    dx_hat = gamma * dout
    dinv_std = (dx_hat * centred).sum(axis=0)  # x_hat = centred * inv_std
    dvar = dinv_std * -0.5 * inv_std**3  # inv_std = (var + eps)^(-1/2)
    dcentred = dx_hat * inv_std + dvar * 2.0 * centred / n  # var = mean(centred^2)
    dx = dcentred - dcentred.mean(axis=0)  # centred = x - mean(x)
    return dx, dgamma, dbeta


# -- ReLU -----------------------------------------------------------------------------------------


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """out = max(x, 0), element by element; the cache is where x > 0.  x (n, m) -> out (n, m)."""
    out = np.maximum(x, 0)
    return out, out > 0


def relu_backward(dout: np.ndarray, active: np.ndarray) -> np.ndarray:
    """dL/dx = dout where the unit was active, 0 elsewhere (the slope at 0 is taken as 0)."""
    return dout * active


# -- dropout (Srivastava et al., 2014) ------------------------------------------------------------


def dropout_forward(
    x: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Inverted dropout, training mode: each unit of each sample kept with probability
    1 - rate and scaled by 1 / (1 - rate), so that evaluation mode passes x unchanged.

    x (n, m) -> out (n, m); the cache is the mask, scaled (the same for stacked parameters).
    """
    keep = 1.0 - rate
    mask = (rng.random(x.shape[-2:], dtype=np.float32) < keep).astype(x.dtype) / keep
    return x * mask, mask


def dropout_backward(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """dL/dx = dout times the same scaled mask."""
    return dout * mask


# -- softmax and cross-entropy --------------------------------------------------------------------


def softmax(scores: np.ndarray) -> np.ndarray:
    """p_ij = exp(s_ij) / sum_k exp(s_ik), shifted by the row's maximum so exp cannot overflow."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def cross_entropy(scores: np.ndarray, y: np.ndarray, smoothing: float = 0.0):
    """Mean cross-entropy of the softmax of `scores` against the labels y:

        L = mean_i (log sum_j exp s_ij - s_i,y_i)   (log-sum-exp: finite for confident mistakes)

    With label smoothing eps the target is q = (1 - eps) onehot(y) + eps / C instead, and
    L = mean_i (log sum_j exp s_ij - (1 - eps) s_i,y_i - eps mean_j s_ij).

    scores (n, C), y (n,) integer labels -> a float (an array over any leading stack axes).
    """
    shifted = scores - scores.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    picked = shifted[..., np.arange(len(y)), y]
    if smoothing:
        picked = (1.0 - smoothing) * picked + smoothing * shifted.mean(axis=-1)
    loss = np.mean(log_norm - picked, axis=-1)
    return float(loss) if np.ndim(loss) == 0 else loss


def softmax_cross_entropy_backward(
    scores: np.ndarray, y: np.ndarray, smoothing: float = 0.0
) -> np.ndarray:
    """dL/dscores = (softmax(scores) - q) / n, q the (smoothed) target.  scores (n, C) -> (n, C)."""
    n, classes = scores.shape
    dscores = softmax(scores)
    dscores[np.arange(n), y] -= 1.0 - smoothing
    if smoothing:
        dscores -= smoothing / classes
    return dscores / n
