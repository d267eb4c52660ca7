"""L2-regularised logistic-regression probe that fits every layer in one batched L-BFGS run.

`LinearProbe` follows the scikit-learn estimator contract (hyper-parameters in `__init__`,
learned state in trailing-underscore attributes, `fit` / `predict` / `predict_proba` / `score`)
and minimises exactly the objective of `sklearn.linear_model.LogisticRegression(C=C)`:

    sum_i  s_i * logloss(y_i, x_i . w + b)  +  0.5 / C * ||w||^2        (b unpenalised)

with s_i the class weight of sample i. Several classes are handled one-vs-rest (as
`sklearn.multiclass.OneVsRestClassifier(LogisticRegression(...))` does), every binary problem
and every layer stacked into one batch, solved together in float64 by a damped Newton method
(`LinearProbe._solve_newton`; an L-BFGS above 2048 features), each problem with its own Hessian,
step and convergence test. The problems are independent, so each result is that problem's own
minimiser.

Standardization (`standardize=True`, the default): every feature of every layer is first
scaled to zero mean and unit variance over the training rows, exactly as scikit-learn's
`StandardScaler` (population std; a constant feature keeps scale 1), and the objective above is
minimised on the standardized features, i.e. the fit equals
`make_pipeline(StandardScaler(), LogisticRegression(C=C))`. Residual streams of real models
carry a few massive dimensions (1e3-1e5 against O(1) elsewhere, e.g. SmolLM2 and Gemma 3): on
raw features the L2 penalty then ignores those dimensions and the solver crawls (SmolLM2: 1000
iterations, not converged); standardized, every dimension is O(1). The scaler is recorded:
`mean_` and `scale_` (`[d]`, or `[n_layers, d]`), the standardized solution in
`standardized_coef_` / `standardized_intercept_`, and `coef_` / `intercept_` are mapped back to
model space, so that `X @ coef_.T + intercept_` (raw activations) gives the logits:

    coef_      = standardized_coef_ / scale_
    intercept_ = standardized_intercept_ - (mean_ / scale_) . standardized_coef_

`coef_` is thus the reading direction in the residual stream's own coordinates (units: logit per
activation unit). `standardize=False` fits raw features (exactly `LogisticRegression(C=C)`).

Shapes: X is `[n, d]` (one layer, like scikit-learn) or `[n_layers, n, d]` (all layers at once).
The learned attributes carry the same leading layer axis: `coef_` is `[n_out, d]` or
`[n_layers, n_out, d]` with `n_out = 1` for two classes (scikit-learn's convention) and
`n_out = n_classes` otherwise; `coef_[l]` is what scikit-learn would give for layer `l`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

__all__ = ["LinearProbe"]


def _as_float(X) -> torch.Tensor:
    """A float32/float64 CPU tensor (other dtypes become float64), without copying float data."""
    Xt = X.detach().cpu() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    return Xt if Xt.dtype in (torch.float32, torch.float64) else Xt.to(torch.float64)


def _as_float64(X) -> torch.Tensor:
    """float64, row-major contiguous (a strided view, e.g. X[:, rows] of a [n, L, d] array,
    makes every matrix product several times slower)."""
    if isinstance(X, torch.Tensor):
        return X.detach().to(device="cpu", dtype=torch.float64).contiguous()
    return torch.as_tensor(np.asarray(X), dtype=torch.float64).contiguous()


def _as_labels(y) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return np.asarray(y)


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Logistic-regression probe, batched over layers, parity with scikit-learn.

    Parameters
    ----------
    C : inverse L2 strength, as in scikit-learn (larger = weaker penalty).
    class_weight : None or "balanced" (weights n / (2 * count) per binary problem).
    max_iter : solver iterations (Newton steps, ~10 are typical; L-BFGS steps above 2048
        features); one iteration = one direction, one or more function evaluations.
    tol : stop when the largest gradient entry of the objective divided by the total sample
        weight (scikit-learn's scaling) falls below `tol`.
    standardize : scale features to zero mean / unit variance over the training rows before
        fitting (module docstring); `coef_` stays in model space either way.
    """

    def __init__(
        self,
        C: float = 1.0,
        class_weight: str | None = None,
        max_iter: int = 500,
        tol: float = 1e-6,
        standardize: bool = True,
    ):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y, sample_weight=None) -> LinearProbe:
        """Fit on X `[n, d]` or `[n_layers, n, d]` (the same labels for every layer).

        y: `[n]` class labels (two classes: one binary problem; more: one-vs-rest), or a 2-D
        `[n, K]` 0/1 indicator matrix: K independent binary problems fitted together (several
        strategies, and their shuffled controls, in one run; like scikit-learn's
        OneVsRestClassifier on a multilabel indicator)."""
        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise ValueError(f"LinearProbe: C must be a positive number, got {self.C!r}.")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(
                f"LinearProbe: class_weight must be None or 'balanced', got {self.class_weight!r}."
            )
        Xt, batched = self._check_X(X, fitting=True)
        y = _as_labels(y)
        if y.ndim not in (1, 2) or y.shape[0] != Xt.shape[1]:
            raise ValueError(
                f"LinearProbe.fit: y must be [n] labels or an [n, K] indicator matrix with one row "
                f"per row of X ({Xt.shape[1]} rows); got shape {tuple(y.shape)}."
            )
        self.multilabel_ = y.ndim == 2
        if self.multilabel_:
            if not np.isin(y, (0, 1)).all():
                raise ValueError("LinearProbe.fit: a 2-D y must be a 0/1 indicator matrix.")
            targets = y.T.astype(bool)
            for k, col in enumerate(targets):
                if col.all() or not col.any():
                    raise ValueError(
                        f"LinearProbe.fit: column {k} of y holds a single class; every label needs "
                        "positive and negative examples. Drop that column (a strategy absent from "
                        "the data, or present everywhere) or add examples."
                    )
            classes = np.arange(y.shape[1])
        else:
            classes = np.unique(y)
            if classes.size < 2:
                raise ValueError(
                    f"LinearProbe.fit: y holds a single class ({classes.tolist()!r}); a probe needs "
                    "examples of at least two classes. Pick a strategy that occurs in the data (and "
                    "is absent somewhere), or add examples of the missing class."
                )
            # One binary target per output: the positive class for 2 classes, each class (OvR) else.
            if classes.size == 2:
                targets = (y == classes[1])[None, :]
            else:
                targets = np.stack([y == c for c in classes])
        self.classes_ = classes
        T = torch.as_tensor(targets, dtype=torch.float64)  # [K, n]
        n = T.shape[1]
        sw = (
            torch.ones(n, dtype=torch.float64)
            if sample_weight is None
            else _as_float64(sample_weight).reshape(n)
        )
        S = sw.expand(T.shape[0], n).clone()
        if self.class_weight == "balanced":
            # scikit-learn's compute_class_weight("balanced") on each binary problem.
            n_pos = T.sum(1, keepdim=True)
            S = S * torch.where(T > 0, n / (2 * n_pos), n / (2 * (n - n_pos)))
        # SciPy's BLAS (the Newton Hessians) on as many threads as torch.
        with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
            coef, intercept, mean, scale, n_iter, grad_max = self._solve_in_chunks(Xt, T, S)
        self.converged_ = grad_max <= self.tol * 100
        if not self.converged_:
            warnings.warn(
                f"LinearProbe: L-BFGS stopped after {n_iter} iterations with gradient "
                f"{grad_max:.2e} > tol; raise max_iter, or lower C"
                + ("" if self.standardize else ", or standardize=True") + ".",
                ConvergenceWarning,
                stacklevel=2,
            )
        # Back to model space (module docstring): logits = X @ coef_.T + intercept_.
        raw_coef = coef / scale[:, None, :]
        raw_intercept = intercept - (raw_coef * mean[:, None, :]).sum(-1)
        if not batched:
            coef, intercept, raw_coef, raw_intercept, mean, scale = (
                t[0] for t in (coef, intercept, raw_coef, raw_intercept, mean, scale))
        self.standardized_coef_ = coef.numpy()
        self.standardized_intercept_ = intercept.numpy()
        self.mean_ = mean.numpy()
        self.scale_ = scale.numpy()
        self.coef_ = raw_coef.numpy()
        self.intercept_ = raw_intercept.numpy()
        self.n_iter_ = n_iter
        self.n_features_in_ = Xt.shape[-1]
        self.n_layers_ = Xt.shape[0] if batched else None
        return self

    # Solver settings (not hyper-parameters: they change the speed, never the minimiser).
    _HISTORY = 10  # L-BFGS memory per problem
    _SUBSAMPLE = 4096  # rows used to estimate the curvature
    _MAX_HALVINGS = 30  # backtracking steps of the line search

    _CHUNK_BYTES = 48 << 20  # CPU: layers per run so that their activations stay in cache

    def _solve_in_chunks(self, X: torch.Tensor, T: torch.Tensor, S: torch.Tensor):
        """-> standardized coef [L, K, d], intercept [L, K], mean [L, d], scale [L, d], n_iter,
        max |grad|.

        One batched run over all layers on a GPU. On a CPU, layers go in groups whose
        activations fit in the cache (~`_CHUNK_BYTES`): every solver iteration streams the
        activations, and once they spill to main memory a per-layer loop's cache reuse wins
        (measured 2026-11-27, Gaussian activations 24 layers x 12k tokens x 256 dims, 6 targets,
        one thread: 3.85 s in one group, 2.96 s in cache-sized groups). The problems are
        independent: grouping changes nothing but speed. Each group is converted to float64
        and standardized on its own, so peak memory is the caller's X plus one group in float64
        (not a float64 copy of every layer: 1.5 GB at 30 layers x 10.8k rows x 576 dims)."""
        L = X.shape[0]
        per_layer = X[0].numel() * 8  # float64 inside the solver
        size = L if X.device.type != "cpu" else max(1, min(L, self._CHUNK_BYTES // max(per_layer, 1)))
        parts = []
        for i in range(0, L, size):
            # A fresh row-major float64 copy: never the caller's tensor (standardized in place
            # below), and never a strided view (X[:, rows] of a [n, L, d] array makes every
            # matrix product several times slower).
            Xc = torch.empty(X[i : i + size].shape, dtype=torch.float64).copy_(X[i : i + size])
            mean = Xc.mean(1)  # [l, d]
            if self.standardize:
                scale = Xc.var(1, correction=0).sqrt()
                scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # StandardScaler's rule
                Xc.sub_(mean[:, None, :]).div_(scale[:, None, :])
            else:
                mean, scale = torch.zeros_like(mean), torch.ones_like(mean)
            parts.append((*self._solve(Xc, T, S), mean, scale))
            del Xc
        return (
            torch.cat([p[0] for p in parts]),
            torch.cat([p[1] for p in parts]),
            torch.cat([p[4] for p in parts]),
            torch.cat([p[5] for p in parts]),
            max(p[2] for p in parts),
            max(p[3] for p in parts),
        )

    _NEWTON_MAX_D = 2048  # widest activations solved by Newton's method; L-BFGS above
    _HESSIAN_BYTES = 256 << 20  # Newton: Hessians formed and factored at once (float64)

    def _solve(self, X: torch.Tensor, T: torch.Tensor, S: torch.Tensor):
        """X [L, n, d] (this call's own copy), T/S [K, n] -> coef [L, K, d], intercept [L, K],
        n_iter, max |grad|.

        Newton's method up to `_NEWTON_MAX_D` features (`_solve_newton`), L-BFGS above it
        (`_solve_lbfgs`: a d x d Hessian per problem would cost more than the fit)."""
        if X.shape[-1] <= self._NEWTON_MAX_D:
            return self._solve_newton(X, T, S)
        return self._solve_lbfgs(X, T, S)

    def _solve_newton(self, X: torch.Tensor, T: torch.Tensor, S: torch.Tensor):
        """Damped Newton's method, every binary problem of every layer with its own exact Hessian,
        step and convergence test (X [L, n, d] is this call's own copy: scaled in place).

        Why Newton: probe problems are ill-conditioned (near-separable strategies, ridge 0.5 / C
        against n rows): L-BFGS, scipy's as scikit-learn uses or a preconditioned one, needs
        400-600 iterations (~1200 passes over X) at SmolLM2's width, while Newton needs ~10, and a
        Hessian X^T D X costs ~10 passes' time (one float32 matrix product, compute-bound, where an
        objective evaluation is memory-bound). Internally the features are centred and divided by
        their spread (v = scale * w: the data part of every Hessian is O(1), whatever the
        activations' magnitudes; the penalty becomes lam * sum_j v_j^2 / scale_j^2, the same
        objective). The Hessian only chooses the direction, so it is formed in float32 (half the
        cost); objective, gradient, convergence test and line search (backtracking Armijo) are
        float64, so the minimiser is exact to `tol`. Start: w = 0, intercept at the weighted
        log-odds of each problem."""
        L, n, d = X.shape
        K = T.shape[0]
        lam = 0.5 / self.C
        norm = S.sum(1)  # [K]; the objective is divided by it: same minimiser, O(1) gradients
        if self.standardize:  # _solve_in_chunks did it
            mean, spread = torch.zeros(L, d, dtype=X.dtype), torch.ones(L, d, dtype=X.dtype)
        else:
            mean = X.mean(1)  # [L, d]
            spread = X.var(1, correction=0).sqrt()
            spread = torch.where(spread > 0, spread, torch.ones_like(spread))
            X.sub_(mean[:, None, :]).div_(spread[:, None, :])
        pen = lam / spread**2  # [L, d]: the penalty on v
        X1 = torch.cat([X.float(), torch.ones(L, n, 1)], -1)  # for the Hessians only
        St, Tt = S.T.contiguous(), T.T.contiguous()  # [n, K]

        def value_and_grad(theta: torch.Tensor):
            """f [L, K] (normalised objective of each problem), its gradient [L, K, d+1], and the
            logits [L, n, K]."""
            v, b = theta[..., :d], theta[..., d]
            z = torch.bmm(X, v.transpose(1, 2)) + b[:, None, :]
            f = (St * (torch.nn.functional.softplus(z) - Tt * z)).sum(1) + (pen[:, None, :] * v * v).sum(-1)
            r = St * (torch.sigmoid(z) - Tt)  # [L, n, K]
            gv = torch.bmm(r.transpose(1, 2), X) + 2 * pen[:, None, :] * v
            return f / norm, torch.cat([gv, r.sum(1)[..., None]], -1) / norm[:, None], z

        def gmax(grad: torch.Tensor) -> torch.Tensor:
            """Largest gradient entry in the coordinates of the problem posed (w, not v)."""
            return torch.cat([grad[..., :d] * spread[:, None, :], grad[..., d:]], -1).abs().amax(-1)

        pos = (S * T).sum(1)
        theta = torch.zeros(L, K, d + 1, dtype=torch.float64)
        theta[..., d] = torch.log(pos.clamp_min(1e-12) / (norm - pos).clamp_min(1e-12))
        f, grad, z = value_and_grad(theta)
        theta, f, grad, n_iter = self._newton_steps(X1, pen, St, norm, theta, f, grad, z, value_and_grad, gmax)
        v, b = theta[..., :d], theta[..., d]
        w = v / spread[:, None, :]
        intercept = b - (mean[:, None, :] * w).sum(-1)  # undo the centring
        return w, intercept, n_iter, float(gmax(grad).max())

    def _newton_steps(self, X1, pen, St, norm, theta, f, grad, z, value_and_grad, gmax):
        """The Newton iterations of `_solve_newton` (from its start; X1 [L, n, d+1]: the scaled
        features and a column of ones, float32): -> theta, f, grad, n_iter."""
        L, K, d = theta.shape[0], theta.shape[1], theta.shape[2] - 1
        active = gmax(grad) > self.tol  # [L, K]
        eye = torch.eye(d + 1, dtype=torch.float64)
        # At the cold start (w = 0) every row of a problem has the same probability, so its
        # curvature weights are its sample weights times one number. Where those take two
        # values (class weights, no sample weights), its Hessian is a * G + (b - a) * G_minority
        # with G = [X 1]^T [X 1] shared by all problems of a layer: one full Gram per layer, not
        # one per problem. two_valued[k] = (majority weight a, minority weight b, minority rows).
        two_valued = [_two_values(col) for col in St.T]
        gram_all: dict[int, torch.Tensor] = {}
        n_iter = 0
        for it in range(self.max_iter):
            if not bool(active.any()):
                break
            # Newton direction of every active problem: H [d+1, d+1] (data part in float32).
            p = torch.sigmoid(z)
            D = (St * p * (1 - p)).float()  # [L, n, K]
            direction = torch.zeros_like(theta)
            todo = active.nonzero().tolist()
            group = max(1, self._HESSIAN_BYTES // (8 * (d + 1) ** 2))  # Hessians held at once
            for g0 in range(0, len(todo), group):
                idx = todo[g0 : g0 + group]
                rows, cols = torch.tensor(idx).T
                H = torch.empty(len(idx), d + 1, d + 1, dtype=torch.float64)
                for j, (layer, k) in enumerate(idx):
                    if it == 0 and two_valued[k] is not None:  # the cold start (see below)
                        if layer not in gram_all:
                            gram_all[layer] = _gram(X1[layer], torch.ones(X1.shape[1])).double()
                        c = float(p[layer, 0, k] * (1 - p[layer, 0, k]))
                        H[j] = _two_valued_gram(X1[layer], two_valued[k], c, gram_all[layer])
                    else:
                        H[j] = _gram(X1[layer], D[layer, :, k])  # [X 1]^T D [X 1]: w and b blocks
                    H[j, :d, :d].diagonal().add_(2 * pen[layer])
                H /= norm[cols][:, None, None]
                # Positive definite in exact arithmetic (ridge); float32 rounding of a nearly
                # singular data part can break it: add a growing multiple of the identity.
                chol, info = torch.linalg.cholesky_ex(H)
                jitter = 1e-10 * H.diagonal(dim1=-2, dim2=-1).mean(-1)
                while bool((info > 0).any()):
                    bad = info > 0
                    H[bad] += jitter[bad, None, None] * eye
                    jitter = jitter * 100
                    chol, info = torch.linalg.cholesky_ex(H)
                direction[rows, cols] = -torch.cholesky_solve(grad[rows, cols, :, None], chol)[..., 0]
                del H, chol
            slope = (grad * direction).sum(-1)
            # Backtracking Armijo line search, a step size per problem (Newton: 1 once close).
            step = torch.ones(L, K, dtype=torch.float64)
            pending = active.clone()
            new_theta, new_f, new_grad, new_z = theta.clone(), f.clone(), grad.clone(), z.clone()
            for _ in range(self._MAX_HALVINGS):
                trial = theta + step[..., None] * direction
                f_t, g_t, z_t = value_and_grad(trial)
                ok = pending & (f_t <= f + 1e-4 * step * slope)
                new_theta = torch.where(ok[..., None], trial, new_theta)
                new_f, new_grad = torch.where(ok, f_t, new_f), torch.where(ok[..., None], g_t, new_grad)
                new_z = torch.where(ok[:, None, :], z_t, new_z)
                pending &= ~ok
                if not bool(pending.any()):
                    break
                step = torch.where(pending, step * 0.5, step)
            stalled = pending  # no decrease found: the problem sits at its numerical optimum
            theta, f, grad, z = new_theta, new_f, new_grad, new_z
            gram_all.clear()
            n_iter = it + 1
            active = active & ~stalled & (gmax(grad) > self.tol)
        return theta, f, grad, n_iter

    def _solve_lbfgs(self, X: torch.Tensor, T: torch.Tensor, S: torch.Tensor):
        """X [L, n, d], T/S [K, n] -> coef [L, K, d], intercept [L, K], n_iter, max |grad|.

        A batched L-BFGS: the L * K binary problems advance in lockstep (one pass over X per
        function evaluation serves all of them) but each keeps its own curvature history, step
        size (backtracking Armijo line search) and convergence test, so a problem never waits
        for, or is slowed by, another. (One joint `torch.optim.LBFGS` over the summed objective
        has the same minimiser but shares one history and one step size, so every problem
        iterates until the hardest one converges.) The initial inverse Hessian of
        each problem is its estimated diagonal inverse Hessian (`_inverse_hessian`, on a row
        subsample), recomputed at iterations 2, 4, 8, 16, ... as long as the work
        spent on it stays within the work spent evaluating the objective (plus the first
        estimate), both counted in multiply-adds from the shapes (not timed: the result must
        not depend on how busy the machine is). Used only above `_NEWTON_MAX_D` features, where a
        d x d Hessian per problem costs more than the fit. Features are centred inside
        the objective (the free intercept absorbs the shift), which decouples w from b."""
        L, n, d = X.shape
        K = T.shape[0]
        lam = 0.5 / self.C
        norm = S.sum(1)  # [K]; the objective is divided by it: same minimiser, O(1) gradients
        mean = X.mean(1)  # [L, d]
        St, Tt = S.T.contiguous(), T.T.contiguous()  # [n, K]
        g = torch.Generator().manual_seed(0)
        sub = torch.randperm(n, generator=g)[: self._SUBSAMPLE] if n > self._SUBSAMPLE else None
        Xs = (X if sub is None else X[:, sub]) - mean[:, None, :]  # [L, m, d] centred subsample
        Ss = St if sub is None else St[sub]

        def logits_of(theta: torch.Tensor, Xm: torch.Tensor, centred: bool = False) -> torch.Tensor:
            w, b = theta[..., :d], theta[..., d]
            z = torch.bmm(Xm, w.transpose(1, 2)) + b[:, None, :]
            if not centred:  # (X - mean) w + b, without materialising X - mean
                z = z - (mean[:, None, :] * w).sum(-1)[:, None, :]
            return z

        def value_and_grad(theta: torch.Tensor):
            """f [L, K] (normalised objective of each problem) and its gradient [L, K, d+1]."""
            w = theta[..., :d]
            z = logits_of(theta, X)  # [L, n, K]
            f = (St * (torch.nn.functional.softplus(z) - Tt * z)).sum(1) + lam * (w * w).sum(-1)
            r = St * (torch.sigmoid(z) - Tt)  # [L, n, K]
            rs = r.sum(1)
            gw = torch.bmm(r.transpose(1, 2), X) - mean[:, None, :] * rs[..., None] + (2 * lam) * w
            return f / norm, torch.cat([gw, rs[..., None]], -1) / norm[:, None]

        # Start: w = 0, intercept at the weighted log-odds of each binary problem.
        pos = (S * T).sum(1)
        theta = torch.zeros(L, K, d + 1, dtype=torch.float64)
        theta[..., d] = torch.log(pos.clamp_min(1e-12) / (norm - pos).clamp_min(1e-12))
        eval_cost = 2 * L * n * d * K  # multiply-adds of one value_and_grad (two bmm)
        hess_cost = self._curvature_cost(L, Xs.shape[1], d, K, n)
        f, grad = value_and_grad(theta)
        work_eval = eval_cost
        work_hess = 0  # work on curvature estimates beyond the first
        active = grad.abs().amax(-1) > self.tol  # [L, K]
        hist_s: list[torch.Tensor] = []
        hist_y: list[torch.Tensor] = []
        hist_rho: list[torch.Tensor] = []
        Hinv = None
        n_iter = 0
        for it in range(self.max_iter):
            if not bool(active.any()):
                break
            if Hinv is None or (it & (it - 1) == 0 and work_hess <= work_eval):
                work_hess += hess_cost if Hinv is not None else 0
                Hinv = self._inverse_hessian(Xs, logits_of(theta, Xs, centred=True), Ss, norm, lam, n)
                hist_s, hist_y, hist_rho = [], [], []
            # Two-loop recursion, every problem with its own history.
            q = grad.clone()
            alphas = []
            for s_i, y_i, rho_i in zip(reversed(hist_s), reversed(hist_y), reversed(hist_rho), strict=True):
                a = rho_i * (s_i * q).sum(-1)
                q -= a[..., None] * y_i
                alphas.append(a)
            r = Hinv(q)
            for (s_i, y_i, rho_i), a in zip(zip(hist_s, hist_y, hist_rho, strict=True), reversed(alphas), strict=True):
                beta = rho_i * (y_i * r).sum(-1)
                r += (a - beta)[..., None] * s_i
            direction = -r
            slope = (grad * direction).sum(-1)
            bad = slope >= 0  # history made it a non-descent direction: fall back to -H0 g
            if bool((bad & active).any()):
                fallback = -Hinv(grad)
                direction = torch.where(bad[..., None], fallback, direction)
                slope = (grad * direction).sum(-1)
            direction = direction * active[..., None]
            # Backtracking Armijo line search, a step size per problem.
            step = torch.ones(L, K, dtype=torch.float64)
            pending = active.clone()
            new_theta, new_f, new_grad = theta.clone(), f.clone(), grad.clone()
            for _ in range(self._MAX_HALVINGS):
                trial = theta + step[..., None] * direction
                f_t, g_t = value_and_grad(trial)
                work_eval += eval_cost
                ok = pending & (f_t <= f + 1e-4 * step * slope)
                new_theta = torch.where(ok[..., None], trial, new_theta)
                new_f = torch.where(ok, f_t, new_f)
                new_grad = torch.where(ok[..., None], g_t, new_grad)
                pending &= ~ok
                if not bool(pending.any()):
                    break
                step = torch.where(pending, step * 0.5, step)
            stalled = pending  # no decrease found: the problem sits at its numerical optimum
            s_new, y_new = new_theta - theta, new_grad - grad
            sy = (s_new * y_new).sum(-1)
            # Curvature pair only where it is positive (the line search does not enforce Wolfe).
            good = (sy > 1e-12 * s_new.norm(dim=-1) * y_new.norm(dim=-1)) & active & ~stalled
            hist_s.append(s_new * good[..., None])
            hist_y.append(y_new * good[..., None])
            hist_rho.append(torch.where(good, 1.0 / sy.where(good, torch.ones_like(sy)), torch.zeros_like(sy)))
            if len(hist_s) > self._HISTORY:
                hist_s.pop(0), hist_y.pop(0), hist_rho.pop(0)
            theta, f, grad = new_theta, new_f, new_grad
            n_iter = it + 1
            active = active & ~stalled & (grad.abs().amax(-1) > self.tol)
        w, b = theta[..., :d], theta[..., d]
        intercept = b - (mean[:, None, :] * w).sum(-1)  # undo the centring
        return w, intercept, n_iter, float(grad.abs().max())

    def _inverse_hessian(self, Xs, z, Ss, norm, lam: float, n: int):
        """The estimated diagonal inverse Hessian of every problem at logits `z` `[L, m, K]`
        (curvature-weighted squared features of the centred subsample `Xs` `[L, m, d]`, plus the
        ridge; the intercept block is decoupled by the centring), as a function applying it to
        `[L, K, d+1]`. Diagonal: at the widths that reach L-BFGS (d > `_NEWTON_MAX_D`) a d x d
        matrix per problem would cost more than the fit."""
        p = torch.sigmoid(z)
        curv = (Ss * p * (1 - p) / norm) * (n / Xs.shape[1])  # [L, m, K]
        ridge = (2 * lam / norm)[None, :, None]  # [1, K, 1]
        hw = torch.einsum("lmd,lmk->lkd", Xs * Xs, curv) + ridge  # [L, K, d]
        hb = curv.sum(1).clamp_min(1e-12)  # [L, K]

        def apply(q: torch.Tensor) -> torch.Tensor:
            return torch.cat([q[..., :-1] / hw, (q[..., -1] / hb)[..., None]], -1)

        return apply

    @staticmethod
    def _curvature_cost(L: int, m: int, d: int, K: int, n: int) -> int:
        """Multiply-adds of one `_inverse_hessian` call."""
        return L * m * d * K

    # --------------------------------------------------------------- prediction
    def _check_X(self, X, fitting: bool = False) -> tuple[torch.Tensor, bool]:
        """X as a CPU tensor in its own float precision (float32 stays float32: the solver and
        the predictions convert one group of layers at a time), with its layer axis."""
        Xt = _as_float(X)
        if Xt.ndim not in (2, 3):
            raise ValueError(
                "LinearProbe: X must be [n, d] (one layer) or [n_layers, n, d] (all layers); "
                f"got shape {tuple(Xt.shape)}."
            )
        batched = Xt.ndim == 3
        if not all(bool(torch.isfinite(x).all()) for x in (Xt if batched else Xt[None])):  # a layer's mask at a time
            raise ValueError("LinearProbe: X contains NaN or inf; check the activations.")
        if not fitting:
            if not hasattr(self, "coef_"):
                raise RuntimeError("LinearProbe: call fit(X, y) before predicting.")
            if Xt.shape[-1] != self.n_features_in_:
                raise ValueError(
                    f"LinearProbe: X has {Xt.shape[-1]} features, the probe was fitted on "
                    f"{self.n_features_in_}."
                )
            if batched != (self.n_layers_ is not None) or (
                batched and Xt.shape[0] != self.n_layers_
            ):
                fitted = "[n, d]" if self.n_layers_ is None else f"[{self.n_layers_}, n, d]"
                raise ValueError(
                    f"LinearProbe: X has shape {tuple(Xt.shape)}, the probe was fitted on X of "
                    f"shape {fitted}; pass the same layers it was fitted on."
                )
        return (Xt if batched else Xt[None]), batched

    @property
    def _binary(self) -> bool:
        return not getattr(self, "multilabel_", False) and self.classes_.size == 2

    def decision_function(self, X) -> np.ndarray:
        """Logits: `[n]` / `[n_layers, n]` for two classes, `[..., n, K]` otherwise."""
        Xt, batched = self._check_X(X)
        coef = torch.as_tensor(self.coef_, dtype=torch.float64)
        icpt = torch.as_tensor(self.intercept_, dtype=torch.float64)
        if not batched:
            coef, icpt = coef[None], icpt[None]
        # One layer at a time in float64 (bounded memory on many-layer inputs).
        logits = torch.stack([torch.einsum("nd,kd->nk", Xt[i].double(), coef[i]) for i in range(Xt.shape[0])])
        logits = logits + icpt[:, None, :]
        out = logits[..., 0] if self._binary else logits
        out = out.numpy()
        return out if batched else out[0]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities `[n, n_classes]` or `[n_layers, n, n_classes]`.

        Several classes: the one-vs-rest probabilities normalised to sum to 1 (as
        OneVsRestClassifier does)."""
        z = torch.as_tensor(self.decision_function(X))
        p = torch.sigmoid(z)
        if self._binary:
            return torch.stack([1 - p, p], -1).numpy()
        if self.multilabel_:
            return p.numpy()  # independent labels: each column its own probability
        return (p / p.sum(-1, keepdim=True)).numpy()

    def predict(self, X) -> np.ndarray:
        """Predicted labels `[n]` or `[n_layers, n]` (multilabel: `[..., n, K]` 0/1)."""
        z = self.decision_function(X)
        if self.multilabel_:
            return (z > 0).astype(int)
        idx = (z > 0).astype(int) if self._binary else z.argmax(-1)
        return self.classes_[idx]

    def binary_probe(self, k: int) -> LinearProbe:
        """Output `k` of a multilabel (or one-vs-rest) probe as a fitted binary probe (classes
        False / True; coef_ `[..., 1, d]`)."""
        if self._binary:
            return self
        out = LinearProbe(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter, tol=self.tol,
                          standardize=self.standardize)
        out.coef_ = self.coef_[..., k : k + 1, :].copy()
        out.intercept_ = self.intercept_[..., k : k + 1].copy()
        out.standardized_coef_ = self.standardized_coef_[..., k : k + 1, :].copy()
        out.standardized_intercept_ = self.standardized_intercept_[..., k : k + 1].copy()
        out.mean_, out.scale_, out.converged_ = self.mean_, self.scale_, self.converged_
        out.classes_ = np.array([False, True])
        out.multilabel_ = False
        out.n_iter_, out.n_features_in_, out.n_layers_ = self.n_iter_, self.n_features_in_, self.n_layers_
        return out

    def score(self, X, y, sample_weight=None):
        """Accuracy: a float for X `[n, d]`, an array `[n_layers]` for X `[n_layers, n, d]`
        (multilabel: accuracy per label, `[K]` or `[n_layers, K]`)."""
        pred = self.predict(X)
        y = _as_labels(y)
        if self.multilabel_:
            correct = (pred == y.astype(int)).astype(np.float64)  # [..., n, K]
            w = None if sample_weight is None else _as_labels(sample_weight).astype(np.float64)
            return np.average(correct, axis=-2, weights=w)
        correct = (pred == y).astype(np.float64)
        if sample_weight is None:
            return correct.mean(-1) if correct.ndim > 1 else float(correct.mean())
        w = _as_labels(sample_weight).astype(np.float64)
        acc = (correct * w).sum(-1) / w.sum()
        return acc if correct.ndim > 1 else float(acc)


def _two_values(weights: torch.Tensor):
    """(majority value a, minority value b, rows of b or None if a == b) of a `[n]` weight
    vector that takes at most two values; None otherwise."""
    vals, counts = torch.unique(weights, return_counts=True)
    if vals.numel() > 2:
        return None
    a, b = (vals[0], vals[-1]) if counts[0] >= counts[-1] else (vals[-1], vals[0])
    return float(a), float(b), ((weights == b).nonzero()[:, 0] if b != a else None)


def _two_valued_gram(X: torch.Tensor, two: tuple, c: float, G: torch.Tensor) -> torch.Tensor:
    """X^T diag(c * weights) X `[d, d]` float64 for weights described by `_two_values` (a, b,
    minority rows), from G = X^T X (float64): c * (a * G + (b - a) * X_minority^T X_minority);
    only the minority rows are multiplied."""
    a, b, minority = two
    H = c * a * G
    if minority is not None:
        H += c * (b - a) * _gram(X[minority], torch.ones(minority.numel())).double()
    return H


def _gram(X: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """X^T diag(weights) X for X `[n, d]` float32, weights `[n]` >= 0: `[d, d]` float32.

    BLAS's symmetric rank-k update (`ssyrk`, through SciPy) on X scaled by sqrt(weights): half
    the multiply-adds of a general matrix product (measured at 8064 x 576, one thread: 33 ms
    against torch's 60 ms). SciPy's BLAS threads: the caller's `threadpool_limits`."""
    from scipy.linalg import blas

    A = (X * weights.sqrt()[:, None]).numpy()  # [n, d] row-major = [d, n] column-major
    upper = torch.from_numpy(blas.ssyrk(1.0, A.T, trans=0)).triu()  # A^T A, upper triangle
    return upper + upper.triu(1).T

