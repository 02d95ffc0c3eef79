"""LogME (You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML
2021): how well a backbone's frozen features will serve a labelled set, without training anything.

For each class, the one-hot column ``y`` is modelled as a Bayesian linear function of the features ``F`` (N
images x D features): ``y = F w + noise`` with ``w ~ N(0, I / alpha)`` and ``noise ~ N(0, I / beta)``. The
evidence ``p(y | F, alpha, beta)`` integrates over every ``w``, so it rewards features from which the labels follow
simply, and punishes both features that cannot explain them and ones that can only by a large, fragile ``w``.
LogME is that log evidence at its maximum over ``alpha`` and ``beta`` (MacKay's fixed point), per image, averaged
over the classes. Higher is better; the scale is the log density of 0/1 targets, so values of one dataset compare,
those of two datasets do not.

Everything here is plain numpy: one thin SVD of ``F`` per backbone, then O(min(N, D)) per iteration and class.
"""

from __future__ import annotations

import math

import numpy as np

MAX_ITERATIONS = 100
TOLERANCE = 1e-6  # relative change of alpha / beta at which the fixed point counts as reached
GUARD = 1e-12  # keeps alpha and beta finite when a class is fit exactly (or not at all)


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence ``log p(target | features, alpha, beta)`` of the Bayesian linear model, in all (not per
    image); the closed form LogME maximizes, for checking it by hand or against a Gaussian's density.

    Args:
        features: N x D.
        target: N values (a class's 0/1 column).
        alpha: Precision of the prior on the weights.
        beta: Precision of the noise.
    """
    basis = _Basis(np.asarray(features, dtype=np.float64))
    return basis.evidence(np.asarray(target, dtype=np.float64), alpha, beta)[0]


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` for ``labels``: the maximum log evidence per image, averaged over the classes.

    Args:
        features: N x D, one row per image (pooled pre-logits features, say).
        labels: N class indices (or any hashable class values).

    Raises:
        ValueError: Rows and labels differ in number, there are no rows, or a value is not finite.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels) or len(features) == 0:
        raise ValueError(f"logme needs N x D features and N labels; got {features.shape} and {labels.shape}")
    if not np.isfinite(features).all():
        raise ValueError("logme needs finite features; some are NaN or infinite")
    # The evidence's maximum does not depend on the features' scale (alpha absorbs it), but the fixed point, which
    # starts at alpha = beta = 1, reaches it in MAX_ITERATIONS only near unit scale: features of RMS 1e6 scored
    # -0.72 where the same features at RMS 1 scored -0.48, and 1e-30 ones as if they were all zero.
    scale = float(np.sqrt(np.mean(features * features)))
    basis = _Basis(features / scale if scale > 0 else features)
    scores = [basis.maximum((labels == label).astype(np.float64)) for label in np.unique(labels)]
    return float(np.mean(scores)) / len(features)


class _Basis:
    """The features' thin SVD, ``F = U diag(s) V^T``, in which the evidence and its fixed point take O(min(N, D))."""

    def __init__(self, features: np.ndarray) -> None:
        self.n, self.d = features.shape
        u, s, _ = np.linalg.svd(features, full_matrices=False)
        self.u, self.sigma = u, s * s  # the nonzero eigenvalues of F^T F; the other d - len(s) are 0

    def evidence(self, target: np.ndarray, alpha: float, beta: float) -> tuple[float, float, float, float]:
        """(log evidence, gamma, |m|^2, |F m - y|^2) at (alpha, beta); m is the posterior mean of the weights."""
        z = self.u.T @ target  # the target in the features' column space; the rest no w can reach
        outside = max(float(target @ target - z @ z), 0.0)
        scale = alpha + beta * self.sigma
        weights_sq = float(np.sum(beta * beta * self.sigma * z * z / (scale * scale)))
        residual_sq = outside + float(np.sum((alpha * z / scale) ** 2))
        gamma = float(np.sum(beta * self.sigma / scale))
        log_det = float(np.sum(np.log(scale))) + (self.d - len(self.sigma)) * math.log(alpha)
        value = (
            self.d / 2 * math.log(alpha)
            + self.n / 2 * math.log(beta)
            - self.n / 2 * math.log(2 * math.pi)
            - beta / 2 * residual_sq
            - alpha / 2 * weights_sq
            - log_det / 2
        )
        return value, gamma, weights_sq, residual_sq

    def maximum(self, target: np.ndarray) -> float:
        """The log evidence at MacKay's fixed point: alpha = gamma / |m|^2, beta = (N - gamma) / |F m - y|^2."""
        alpha, beta = 1.0, 1.0
        for _ in range(MAX_ITERATIONS):
            _, gamma, weights_sq, residual_sq = self.evidence(target, alpha, beta)
            new_alpha = max(gamma, GUARD) / max(weights_sq, GUARD)
            new_beta = max(self.n - gamma, GUARD) / max(residual_sq, GUARD)
            done = abs(new_alpha / new_beta - alpha / beta) <= TOLERANCE * alpha / beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        return self.evidence(target, alpha, beta)[0]
