"""LinearProbe: same objective as scikit-learn's LogisticRegression, fitted for all layers at once."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

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


def _sklearn_fit(X, y, standardize, **kw):
    """scikit-learn's fit of the probe's objective: LogisticRegression on raw features, or
    behind a StandardScaler; returns (estimator, coef and intercept in model space)."""
    lr = LogisticRegression(**kw)
    if not standardize:
        lr.fit(X, y)
        return lr, lr.coef_, lr.intercept_
    pipe = make_pipeline(StandardScaler(), lr).fit(X, y)
    sc = pipe[0]
    coef = lr.coef_ / sc.scale_
    return pipe, coef, lr.intercept_ - coef @ sc.mean_


@pytest.mark.parametrize("C", [0.01, 1.0])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("standardize", [True, False])
def test_batched_probe_matches_sklearn_logistic_regression_on_every_layer(C, class_weight, standardize):
    # Acceptance: held-out accuracy within 1 point and coefficient cosine >= 0.99 per layer.
    # Both minimise the same strictly convex objective (standardized: the pipeline
    # StandardScaler -> LogisticRegression), so the optimum is unique; the margin only absorbs
    # the two solvers' stopping tolerances. coef_ is compared in model space.
    X, y = _layered_data()
    tr, te = slice(0, 900), slice(900, None)
    probe = LinearProbe(C=C, class_weight=class_weight, standardize=standardize).fit(X[:, tr], y[tr])
    assert probe.coef_.shape == (4, 1, 24) and probe.intercept_.shape == (4, 1)
    acc = probe.score(X[:, te], y[te])
    for layer in range(X.shape[0]):
        sk, coef, icpt = _sklearn_fit(X[layer, tr], y[tr], standardize, C=C, class_weight=class_weight,
                                      max_iter=5000, tol=1e-8)
        assert _cos(probe.coef_[layer], coef) >= 0.99
        assert abs(acc[layer] - sk.score(X[layer, te], y[te])) <= 0.01
        np.testing.assert_allclose(probe.intercept_[layer], icpt, atol=0.05 + 0.05 * abs(icpt[0]))


def test_one_layer_input_behaves_like_sklearn_estimator():
    X, y = _layered_data(L=1)
    X = X[0]
    probe = LinearProbe(C=0.5).fit(X, y)
    sk, coef, icpt = _sklearn_fit(X, y, True, C=0.5, max_iter=5000, tol=1e-8)
    assert probe.coef_.shape == coef.shape and probe.intercept_.shape == icpt.shape
    assert probe.mean_.shape == probe.scale_.shape == (24,)
    np.testing.assert_array_equal(probe.classes_, sk.classes_)
    np.testing.assert_allclose(probe.predict_proba(X), sk.predict_proba(X), atol=2e-3)
    assert isinstance(probe.score(X, y), float)
    # The estimator contract: parameters round-trip through get_params / clone.
    assert clone(probe).get_params() == {"C": 0.5, "class_weight": None, "max_iter": 500, "tol": 1e-6,
                                         "standardize": True}


def test_several_strategies_are_one_vs_rest_like_sklearn():
    X, y = _layered_data(L=2, n_classes=3)
    names = np.array(["compute", "verification", "backtracking"])[y]
    probe = LinearProbe(C=1.0, standardize=False).fit(X, names)
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
            sk, coef, _ = _sklearn_fit(X[layer], Y[:, k], True, C=1.0, class_weight="balanced", max_iter=5000,
                                       tol=1e-6)
            assert _cos(probe.coef_[layer, k], coef) >= 0.99
            one = probe.binary_probe(k)
            assert abs(one.score(X, Y[:, k])[layer] - sk.score(X[layer], Y[:, k])) <= 0.01
    with pytest.raises(ValueError, match="column 1 of y holds a single class"):
        LinearProbe().fit(X, np.stack([y, np.zeros_like(y)], 1))


def _massive_data(seed=0, L=3, n=4000, d=64):
    """A residual stream with massive dimensions, as in real models (SmolLM2 up to 8e3, Gemma 3
    up to 8e4): three dimensions at 3e3 / 2e4 / 8e4 (+-10%) on every row and a 1e5 spike on 2%
    of the rows (first-token-like), beside O(1) features; the label reads layer 1, massive
    dimensions included (after standardization every dimension counts alike)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    X = np.stack([rng.normal(size=(n, d)) @ mix for _ in range(L)])
    for j, mag in ((3, 3e3), (17, 2e4), (40, 8e4)):
        X[:, :, j] = mag * (1 + 0.1 * rng.normal(size=(L, n)))
    X[:, rng.random(n) < 0.02, 5] = 1e5
    w = rng.normal(size=d)
    z = (X[1] - X[1].mean(0)) / X[1].std(0) @ w / np.sqrt(d) * 3
    return X.astype(np.float32), (z + rng.logistic(size=n) > 0).astype(int)


def test_probe_on_massive_activations_converges_and_matches_the_standardized_sklearn_fit():
    # Same strictly convex objective as StandardScaler -> LogisticRegression, so the optimum is
    # unique: held-out accuracy within 0.5 points (5 of 1000 rows) and AUROC within 0.002 absorb
    # only the two solvers' stopping tolerances (measured gaps: 0 / < 1e-5).
    from sklearn.metrics import roc_auc_score

    X, y = _massive_data()
    tr, te = slice(0, 3000), slice(3000, None)
    probe = LinearProbe(C=1.0, max_iter=500).fit(X[:, tr], y[tr])
    assert probe.converged_ and probe.n_iter_ < 100
    assert probe.mean_.shape == probe.scale_.shape == (3, 64)
    assert probe.scale_[0, 40] > 1e3  # the massive dimension's spread was recorded
    acc, scores = probe.score(X[:, te], y[te]), probe.decision_function(X[:, te])
    for layer in range(3):
        sk, coef, icpt = _sklearn_fit(X[layer, tr].astype(np.float64), y[tr], True, C=1.0, max_iter=5000, tol=1e-8)
        assert _cos(probe.coef_[layer], coef) >= 0.999
        assert abs(acc[layer] - sk.score(X[layer, te], y[te])) <= 0.005
        auc_sk = roc_auc_score(y[te], sk.decision_function(X[layer, te]))
        assert abs(roc_auc_score(y[te], scores[layer]) - auc_sk) <= 0.002
    assert acc[1] > 0.75  # the informative layer is read (chance ~0.5)
    # coef_ maps the model-space activations to the logits of the standardized fit.
    Z = (X[:, te].astype(np.float64) - probe.mean_[:, None]) / probe.scale_[:, None]
    std_logits = np.einsum("lnd,ld->ln", Z, probe.standardized_coef_[:, 0]) + probe.standardized_intercept_
    np.testing.assert_allclose(scores, std_logits, rtol=1e-6, atol=1e-6)


def _token_data(seed=0, L=2, n=6000, d=128, vocab=600):
    """Activations that carry token identity (a Zipf-distributed vocabulary, each token a random
    correlated embedding, small noise, one massive dimension) and a label that is a token set
    (2% of rows): a near-separable, ill-conditioned problem like a strategy probe on a residual
    stream."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    tok = rng.choice(vocab, size=n, p=p / p.sum())
    emb = rng.normal(size=(L, vocab, d)) @ (rng.normal(size=(d, d)) / np.sqrt(d))
    X = emb[:, tok] + 0.2 * rng.normal(size=(L, n, d))
    X[:, :, 7] += 3e3
    pos = rng.choice(np.arange(20, vocab), size=vocab * 5 // 100, replace=False)
    return X.astype(np.float32), np.isin(tok, pos).astype(int)


def test_near_separable_probe_converges_in_newton_steps_and_matches_sklearn():
    # Newton's method converges quadratically once close: ~10 iterations from the cold start
    # (measured 10). The former L-BFGS took 140 here (SmolLM2 width: 400-600, ~14 min for 30
    # layers), scikit-learn's lbfgs similar. Bound 20: twice the measured count.
    X, y = _token_data()
    tr, te = slice(0, 4500), slice(4500, None)
    Y = np.stack([y, y[np.random.default_rng(1).permutation(y.size)]], 1)  # + a shuffled control
    probe = LinearProbe(C=1.0, class_weight="balanced", max_iter=1000).fit(X[:, tr], Y[tr])
    assert probe.converged_ and probe.n_iter_ <= 20
    for layer in range(2):
        for k in range(2):
            sk, coef, _ = _sklearn_fit(X[layer, tr].astype(np.float64), Y[tr, k], True, C=1.0,
                                       class_weight="balanced", max_iter=5000, tol=1e-8)
            assert _cos(probe.coef_[layer, k], coef) >= 0.999
            acc = probe.binary_probe(k).score(X[:, te], Y[te, k])[layer]
            assert abs(acc - sk.score(X[layer, te], Y[te, k])) <= 0.002  # 3 of 1500 rows


def test_newton_hessian_groups_and_the_wide_lbfgs_path_give_the_same_minimiser(monkeypatch):
    # Hessians are formed in memory-bounded groups, and activations wider than
    # _NEWTON_MAX_D go to L-BFGS: neither may change the result (one strictly convex objective).
    X, y = _layered_data(L=3)
    Y = np.stack([y, (X[0, :, 0] > 0.3).astype(int)], 1)
    ref = LinearProbe(C=1.0, class_weight="balanced").fit(X, Y)
    monkeypatch.setattr(LinearProbe, "_HESSIAN_BYTES", 1)  # one Hessian at a time
    one = LinearProbe(C=1.0, class_weight="balanced").fit(X, Y)
    np.testing.assert_allclose(one.coef_, ref.coef_, rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(LinearProbe, "_NEWTON_MAX_D", 0)  # every width through L-BFGS
    wide = LinearProbe(C=1.0, class_weight="balanced", max_iter=3000).fit(X, Y)
    assert wide.converged_
    for layer in range(3):
        for k in range(2):
            assert _cos(wide.coef_[layer, k], ref.coef_[layer, k]) >= 0.9999
    assert np.abs(wide.predict(X) - ref.predict(X)).mean() <= 0.002


def test_cold_start_hessian_from_one_shared_gram_equals_the_direct_one():
    # At w = 0 a problem's curvature weights are its class weights times one number: its Hessian
    # is built from the layer's shared Gram plus the minority rows' (one full product per layer,
    # not per problem). It must equal X^T diag(c * weights) X, to float32 rounding.
    import torch

    from probes.linear_probe import _gram, _two_valued_gram, _two_values

    rng = np.random.default_rng(0)
    X = torch.tensor(rng.normal(size=(500, 9)), dtype=torch.float32)
    y = rng.random(500) < 0.1
    for w in (np.where(y, 500 / (2 * y.sum()), 500 / (2 * (~y).sum())), np.ones(500), np.where(y, 0.2, 3.0)):
        w = torch.tensor(w)
        two = _two_values(w)
        G = _gram(X, torch.ones(500)).double()
        direct = _gram(X, (0.21 * w).float()).double()
        np.testing.assert_allclose(_two_valued_gram(X, two, 0.21, G), direct, rtol=1e-5, atol=1e-4)
    assert _two_values(torch.tensor([1.0, 2.0, 3.0])) is None  # three values: the direct product
