"""LogME is the maximum evidence of a Bayesian linear model, and has the properties You et al. (ICML 2021) rely on."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from tlq.ml.logme import log_evidence, logme


def labelled_features(noise: float, n: int = 240, d: int = 24, classes: int = 4, seed: int = 0):
    """Features that are each class's own direction plus Gaussian noise of scale ``noise``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    return centres[labels] + noise * rng.normal(size=(n, d)), labels


def test_the_evidence_by_hand():
    # F = [[1], [1]], y = [1, 1], alpha = beta = 1: y ~ N(0, F F^T + I) = N(0, [[2, 1], [1, 2]]), whose eigenvalues
    # are 3 (along y) and 1, so log p(y) = -log(2 pi) - log(3) / 2 - |y|^2 / (2 * 3).
    expected = -math.log(2 * math.pi) - math.log(3) / 2 - 1 / 3
    assert log_evidence(np.array([[1.0], [1.0]]), np.array([1.0, 1.0]), 1.0, 1.0) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("d", [3, 9])  # fewer features than images, and more
def test_the_evidence_is_the_gaussian_density_of_the_targets(d):
    rng = np.random.default_rng(d)
    features, target = rng.normal(size=(7, d)), rng.normal(size=7)
    for alpha, beta in ((0.5, 2.0), (3.0, 0.1)):
        covariance = features @ features.T / alpha + np.eye(7) / beta
        expected = multivariate_normal(np.zeros(7), covariance).logpdf(target)
        assert log_evidence(features, target, alpha, beta) == pytest.approx(expected, rel=1e-9)


def test_logme_is_the_evidence_at_its_maximum():
    features, labels = labelled_features(noise=1.0, n=60, d=8, classes=3)
    best = []
    for label in range(3):
        target = (labels == label).astype(float)
        found = minimize(
            lambda p, t=target: -log_evidence(features, t, *np.exp(p)), x0=[0.0, 0.0], method="Nelder-Mead"
        )
        best.append(-found.fun / len(features))
    assert logme(features, labels) == pytest.approx(np.mean(best), abs=1e-6)


def test_features_that_carry_the_labels_score_higher_the_less_noise_hides_them():
    scores = [logme(*labelled_features(noise)) for noise in (0.1, 0.3, 1.0, 3.0)]
    assert scores == sorted(scores, reverse=True)
    _, labels = labelled_features(0.1)
    unrelated = np.random.default_rng(1).normal(size=(len(labels), 24))
    assert logme(unrelated, labels) < scores[-1]


def test_logme_ignores_the_features_scale_rotation_and_the_class_names():
    features, labels = labelled_features(noise=1.0)
    score = logme(features, labels)
    rotation, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(24, 24)))
    for scale in (1e-30, 1e-6, 1000, 1e7, 1e30):  # the prior's alpha absorbs a scale, however far from 1
        assert logme(scale * features, labels) == pytest.approx(score, abs=1e-6)
    assert logme(features @ rotation, labels) == pytest.approx(score, abs=1e-9)  # the prior is isotropic
    assert logme(features, np.array(["cat", "dog", "owl", "yak"])[labels]) == pytest.approx(score, abs=1e-12)


def test_mismatched_or_non_finite_input_is_refused():
    with pytest.raises(ValueError, match="N x D features and N labels"):
        logme(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        logme(np.array([[np.nan], [1.0]]), np.array([0, 1]))
