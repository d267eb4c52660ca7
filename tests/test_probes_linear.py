"""LinearProbe: same objective as scikit-learn's LogisticRegression, fitted for all layers at once."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from probes.linear_probe import LinearProbe


def _layered_data(seed=0, L=4, n=1200, d=24, n_classes=2):
    """Correlated features whose scale grows with depth (like a residual stream), with a label
    that is a noisy linear function of them: realistic conditioning, not an easy toy."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    X = np.stack([(rng.normal(size=(n, d)) @ mix + rng.normal(size=d)) * (1 + 3 * layer)
                  for layer in range(L)])
    w = rng.normal(size=(n_classes, d))
    src = X[min(1, L - 1)]
    logits = src @ w.T / src.std() + rng.gumbel(size=(n, n_classes))
    y = logits.argmax(1) if n_classes > 2 else (logits[:, 1] - logits[:, 0] > 0.7).astype(int)
    return X, y


def _cos(a, b):
    return float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("C", [0.01, 1.0])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_batched_probe_matches_sklearn_logistic_regression_on_every_layer(C, class_weight):
    # Acceptance: held-out accuracy within 1 point and coefficient cosine >= 0.99 per layer.
    # Both minimise the same strictly convex objective, so the optimum is unique; the margin
    # only absorbs the two solvers' stopping tolerances.
    X, y = _layered_data()
    tr, te = slice(0, 900), slice(900, None)
    probe = LinearProbe(C=C, class_weight=class_weight).fit(X[:, tr], y[tr])
    assert probe.coef_.shape == (4, 1, 24) and probe.intercept_.shape == (4, 1)
    acc = probe.score(X[:, te], y[te])
    for layer in range(X.shape[0]):
        sk = LogisticRegression(C=C, class_weight=class_weight, max_iter=5000, tol=1e-8)
        sk.fit(X[layer, tr], y[tr])
        assert _cos(probe.coef_[layer], sk.coef_) >= 0.99
        assert abs(acc[layer] - sk.score(X[layer, te], y[te])) <= 0.01
        np.testing.assert_allclose(probe.intercept_[layer], sk.intercept_, atol=0.05 + 0.05 * abs(sk.intercept_[0]))


def test_one_layer_input_behaves_like_sklearn_estimator():
    X, y = _layered_data(L=1)
    X = X[0]
    probe = LinearProbe(C=0.5).fit(X, y)
    sk = LogisticRegression(C=0.5, max_iter=5000, tol=1e-8).fit(X, y)
    assert probe.coef_.shape == sk.coef_.shape and probe.intercept_.shape == sk.intercept_.shape
    np.testing.assert_array_equal(probe.classes_, sk.classes_)
    np.testing.assert_allclose(probe.predict_proba(X), sk.predict_proba(X), atol=2e-3)
    assert isinstance(probe.score(X, y), float)
    # The estimator contract: parameters round-trip through get_params / clone.
    assert clone(probe).get_params() == {"C": 0.5, "class_weight": None, "max_iter": 500, "tol": 1e-6}


def test_several_strategies_are_one_vs_rest_like_sklearn():
    X, y = _layered_data(L=2, n_classes=3)
    names = np.array(["compute", "verification", "backtracking"])[y]
    probe = LinearProbe(C=1.0).fit(X, names)
    assert probe.coef_.shape == (2, 3, 24)
    for layer in range(2):
        sk = OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=5000, tol=1e-8)).fit(X[layer], names)
        for k in range(3):
            assert _cos(probe.coef_[layer, k], sk.estimators_[k].coef_) >= 0.99
        agree = (probe.predict(X)[layer] == sk.predict(X[layer])).mean()
        assert agree >= 0.99


def test_single_class_labels_are_refused_with_the_fix():
    X, _ = _layered_data(L=2)
    with pytest.raises(ValueError, match="single class.*at least two classes"):
        LinearProbe().fit(X, np.zeros(X.shape[1], dtype=bool))


def test_predicting_with_other_layers_or_width_is_refused():
    X, y = _layered_data(L=2)
    probe = LinearProbe().fit(X, y)
    with pytest.raises(ValueError, match="fitted on"):
        probe.predict(X[0])
    with pytest.raises(ValueError, match="features"):
        probe.predict(X[:, :, :10])
    with pytest.raises(ValueError, match="one row per row of X"):
        LinearProbe().fit(X, y[:-1])


def test_several_binary_targets_fit_together_like_separate_sklearn_fits():
    # The sweep fits every strategy and its shuffled control in one run (an indicator matrix);
    # each column must come out as its own LogisticRegression (independent problems).
    X, y = _layered_data(L=2)
    rng = np.random.default_rng(4)
    Y = np.stack([y, y[rng.permutation(y.size)], (X[0, :, 0] > 0.3).astype(int)], axis=1)
    probe = LinearProbe(C=1.0, class_weight="balanced").fit(X, Y)
    assert probe.coef_.shape == (2, 3, 24) and probe.predict(X).shape == (2, 1200, 3)
    for layer in range(2):
        for k in range(3):
            sk = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000, tol=1e-6).fit(X[layer], Y[:, k])
            assert _cos(probe.coef_[layer, k], sk.coef_) >= 0.99
            one = probe.binary_probe(k)
            assert abs(one.score(X, Y[:, k])[layer] - sk.score(X[layer], Y[:, k])) <= 0.01
    with pytest.raises(ValueError, match="column 1 of y holds a single class"):
        LinearProbe().fit(X, np.stack([y, np.zeros_like(y)], 1))
