"""bit_medical.fewshot linear probe against scikit-learn's Ridge; shot selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from bit_medical import fewshot
from input_pipeline.fewshot import k_shot_indices


def _problem(n, d, c, seed, scale=1.0):
    rng = np.random.RandomState(seed)
    labels = np.concatenate([np.arange(c), rng.randint(0, c, size=n - c)])
    centres = rng.normal(size=(c, d)) * scale
    features = centres[labels] + rng.normal(size=(n, d))
    return features.astype(np.float32), labels.astype(np.int32), centres


def _sklearn_ridge(features, labels, c, l2):
    model = Ridge(alpha=l2, fit_intercept=True).fit(
        features.astype(np.float64), np.eye(c)[labels])
    return model.coef_.T, model.intercept_, model


@pytest.mark.parametrize(
    "n,d,c,l2",
    [(30, 64, 6, 1.0),     # N < D: dual form
     (40, 512, 10, 0.1),   # few-shot shape: N << D
     (300, 24, 5, 3.0),    # N > D: primal form
     (8, 8, 4, 0.5)],      # N == D
)
def test_fit_ridge_equals_sklearn(n, d, c, l2):
    features, labels, _ = _problem(n, d, c, seed=n + d)
    weights, bias = fewshot.fit_ridge(features, labels, c, l2)
    ref_w, ref_b, _ = _sklearn_ridge(features, labels, c, l2)
    assert weights.shape == (d, c) and bias.shape == (c,)
    np.testing.assert_allclose(np.asarray(weights), ref_w, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bias), ref_b, atol=1e-4)


def test_mask_leaves_rows_out_exactly():
    features, labels, _ = _problem(40, 32, 4, seed=1)
    keep = np.ones(40, bool)
    keep[[3, 7, 20, 33, 39]] = False  # e.g. padding rows of a last batch
    garbage = features.copy()
    garbage[~keep] = 1e3  # padded rows must not matter whatever they hold
    w_masked, b_masked = fewshot.fit_ridge(garbage, labels, 4, 0.5, keep)
    ref_w, ref_b, _ = _sklearn_ridge(features[keep], labels[keep], 4, 0.5)
    np.testing.assert_allclose(np.asarray(w_masked), ref_w, atol=1e-4)
    np.testing.assert_allclose(np.asarray(b_masked), ref_b, atol=1e-4)


def test_probe_accuracy_equals_sklearn_prediction():
    c = 5
    train_x, train_y, centres = _problem(25, 128, c, seed=2, scale=0.4)
    rng = np.random.RandomState(3)
    test_y = rng.randint(0, c, size=400).astype(np.int32)
    test_x = (centres[test_y] + rng.normal(size=(400, 128))).astype(np.float32)
    acc = float(fewshot.probe_accuracy(train_x, train_y, test_x, test_y, c, 1.0))
    _, _, model = _sklearn_ridge(train_x, train_y, c, 1.0)
    expected = np.mean(model.predict(test_x.astype(np.float64)).argmax(1) == test_y)
    assert acc == pytest.approx(expected, abs=1e-6)
    assert 0.3 < acc < 1.0  # a noisy case: the comparison is not vacuous
    # A test mask counts only the kept rows.
    mask = np.arange(400) < 100
    acc_masked = float(fewshot.probe_accuracy(train_x, train_y, test_x, test_y, c, 1.0,
                                              None, mask))
    expected_masked = np.mean(model.predict(test_x[:100].astype(np.float64)).argmax(1)
                              == test_y[:100])
    assert acc_masked == pytest.approx(expected_masked, abs=1e-6)


@pytest.mark.parametrize("k", [1, 5])
def test_probe_is_perfect_on_separable_features(k):
    c, d = 10, 256
    rng = np.random.RandomState(k)
    centres = rng.normal(size=(c, d)) * 3.0
    pool_y = np.repeat(np.arange(c), 50).astype(np.int32)
    pool_x = (centres[pool_y] + 0.3 * rng.normal(size=(len(pool_y), d))).astype(np.float32)
    idx = k_shot_indices(pool_y, k, seed=0, num_classes=c)
    test_y = rng.randint(0, c, size=500).astype(np.int32)
    test_x = (centres[test_y] + 0.3 * rng.normal(size=(500, d))).astype(jnp.bfloat16)
    acc = fewshot.probe_accuracy(pool_x[idx], pool_y[idx], test_x, test_y, c, 1.0)
    assert float(acc) == 1.0


def test_l2_sweep_does_not_retrace():
    features, labels, _ = _problem(20, 64, 4, seed=5)
    traces = []

    def fit(x, y, l2):
        traces.append(None)
        return fewshot.fit_ridge(x, y, 4, l2)

    jitted = jax.jit(fit)
    results = [jitted(features, labels, l2) for l2 in (0.01, 1.0, 100.0)]
    assert len(traces) == 1
    # Larger l2 shrinks the weights: the traced l2 really reaches the solve.
    norms = [float(jnp.linalg.norm(w)) for w, _ in results]
    assert norms[0] > norms[1] > norms[2]


def test_fit_ridge_shape_error():
    with pytest.raises(ValueError, match=r"features must be \[N, D\] and labels \[N\]"):
        fewshot.fit_ridge(np.zeros((4, 3), np.float32), np.zeros((5,), np.int32), 2)
