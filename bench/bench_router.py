"""Router latency and accuracy: scikit-learn's SVC against FIR's fast path and smaller models.

Synthetic 2048-d features in three overlapping classes (class centres a little apart, a shared
64-d low-rank structure, unit noise), so the RBF SVC keeps thousands of support vectors as on
real features. Per training size the study's router (StandardScaler -> Platt-calibrated
SVC(rbf, C=1, gamma='auto'), ``Router.fit(..., cv=0)``: no grid search) is fitted once, then
every variant answers the same held-out queries:

- ``sklearn``: the pipeline's own ``predict_proba`` (libsvm, kernel row by row);
- ``fast``: FIR's default ``Router.predict_proba``: the same decision function as matrix
  products over float32 support vectors, near-ties (top two within 1e-4) recomputed by sklearn;
- ``exact fp64``: the matrix products in float64 (``Router(predictor="exact")``);
- ``pca256 + fast``: FIR's ``Router.fit(pca_dim=256)`` (``fir train-router --pca-dim 256``):
  standardised features projected on 256 principal components, then the same kind of SVC,
  through the fast path (fewer dims, not the same model: its accuracy is measured, not
  assumed);
- ``linear SVC``: the same router with a linear kernel (C=1), what ``fir train-router
  --select simplest`` picks when it scores within one standard error of the best; FIR's fast
  path folds its support vectors into one hyperplane per class pair;
- ``logreg``: StandardScaler -> LogisticRegression (no support vectors at all).

Single-query latency is interleaved across variants (query i through every variant, then
query i + 1), so machine noise hits all alike; p50 and p90 over the queries are reported.

    python -m bench.bench_router [--sizes 5000,10000] [--queries 100] [--batch 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from bench._common import machine_header
from shared.vision.router import Router

D = 2048
Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]


def make_data(n: int, n_test: int, sep: float, seed: int) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, sep, (3, D))
    basis = rng.normal(0, 1, (64, D)) / 8
    labels = np.array(["dress", "shirt", "toptee"])

    def draw(m: int) -> tuple[np.ndarray, list[str]]:
        y = rng.integers(0, 3, m)
        x = centres[y] + rng.normal(0, 1, (m, 64)) @ basis + rng.normal(0, 1, (m, D))
        return x.astype(np.float32), labels[y].tolist()

    x, y = draw(n)
    xt, yt = draw(n_test)
    return x, y, xt, yt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,10000")
    ap.add_argument("--test", type=int, default=2000, help="held-out queries for accuracy")
    ap.add_argument("--queries", type=int, default=100, help="single queries timed per variant")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--sep", type=float, default=0.07, help="class centre spread (smaller: more overlap)")
    args = ap.parse_args()
    print(machine_header("Router: prediction latency and accuracy per model"))
    print(f"- load average at start: {os.getloadavg()[0]:.2f}\n")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        x, y, xt, yt = make_data(n, args.test, args.sep, seed=n)
        t0 = time.perf_counter()
        router = Router.fit(x, y, model_id="bench", backbone="synthetic", cv=0)
        fit_s = time.perf_counter() - t0
        assert router.pipeline is not None
        svc = router.pipeline[-1].calibrated_classifiers_[0].estimator
        n_sv = len(svc.support_)
        exact = dataclasses.replace(router, predictor="exact")

        t0 = time.perf_counter()
        small = Router.fit(x, y, model_id="bench", backbone="synthetic", cv=0, pca_dim=256)
        pca_fit_s = time.perf_counter() - t0
        assert small.pipeline is not None
        small_sv = len(small.pipeline[-1].calibrated_classifiers_[0].estimator.support_)
        pca_predict = small.predict_proba

        t0 = time.perf_counter()
        linear = Router.fit(x, y, model_id="bench", backbone="synthetic", cv=0,
                            params={"svc__kernel": "linear", "svc__C": 1.0})
        linear_fit_s = time.perf_counter() - t0
        assert linear.pipeline is not None
        linear_sv = len(linear.pipeline[-1].calibrated_classifiers_[0].estimator.support_)
        print(f"size {n}: linear router fitted in {linear_fit_s:.1f} s", flush=True)

        t0 = time.perf_counter()
        logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x, y)
        logreg_fit_s = time.perf_counter() - t0

        variants: dict[str, tuple[Predict, float, str]] = {
            "sklearn SVC (libsvm)": (router.pipeline.predict_proba, fit_s, str(n_sv)),
            "fast (FIR default)": (router.predict_proba, fit_s, str(n_sv)),
            "exact fp64": (exact.predict_proba, fit_s, str(n_sv)),
            "pca256 + fast": (pca_predict, pca_fit_s, str(small_sv)),
            "linear SVC, fast path": (linear.predict_proba, linear_fit_s, f"{linear_sv} (folded)"),
            "logreg": (logreg.predict_proba, logreg_fit_s, "0"),
        }
        labels = np.asarray(router.labels)
        truth = np.asarray(yt)
        ref = router.pipeline.predict_proba(xt)
        for fn, *_rest in variants.values():
            fn(xt[:2])  # warm-up
        stats: dict[str, dict[str, float]] = {}
        for name, (fn, *_rest) in variants.items():
            proba = fn(xt)
            same = float(np.mean(proba.argmax(1) == ref.argmax(1)))
            acc = float(np.mean(labels[proba.argmax(1)] == truth))
            stats[name] = {"acc": acc, "same": same, "maxdp": float(np.abs(proba - ref).max())}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.queries):
            q = xt[i : i + 1]
            for name, (fn, *_rest) in variants.items():
                t0 = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - t0)
        qb = xt[: args.batch]
        for name, (fn, fit, sv) in variants.items():
            t0 = time.perf_counter()
            fn(qb)
            batch_ms = (time.perf_counter() - t0) * 1000 / len(qb)
            t = np.asarray(times[name]) * 1000
            rows.append((n, name, sv, fit, stats[name]["acc"], stats[name]["same"], stats[name]["maxdp"],
                         float(np.median(t)), float(np.percentile(t, 90)), float(t.min()), batch_ms))
        print(f"size {n}: fitted and timed (load average {os.getloadavg()[0]:.2f})", flush=True)

    print()
    print("| training points | model | support vectors | fit s | test accuracy | same decision as sklearn "
          f"| max abs prob diff | 1 query p50 ms | 1 query p90 ms | 1 query min ms | batch {args.batch}: ms/query |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, name, sv, fit, acc, same, dp, p50, p90, mn, bms in rows:
        print(f"| {n} | {name} | {sv} | {fit:.1f} | {acc:.4f} | {same:.4f} | {dp:.1e} | {p50:.2f} | {p90:.2f} "
              f"| {mn:.2f} | {bms:.3f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; fit s of the SVC rows is one Router.fit "
          "(cv=0: no grid search; 2-fold Platt calibration + the final SVC)")


if __name__ == "__main__":
    main()
