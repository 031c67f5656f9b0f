"""bit_medical.losses against PyTorch's losses and the reference's mixup."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from bit_medical import losses


def make_logits(rng, b=12, c=5):
    return (3 * rng.standard_normal((b, c))).astype(np.float32)


def multilabel_targets(rng, b=12, c=5, unknown=0.3):
    y = (rng.random((b, c)) < 0.4).astype(np.float32)
    y[rng.random((b, c)) < unknown] = np.nan
    return y


def test_softmax_cross_entropy_matches_torch():
    rng = np.random.default_rng(0)
    logits, labels = make_logits(rng), rng.integers(0, 5, 12)
    want = torch.nn.CrossEntropyLoss()(torch.tensor(logits), torch.tensor(labels))
    got = losses.softmax_cross_entropy(logits, labels)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)


def test_padded_rows_count_nowhere():
    rng = np.random.default_rng(1)
    logits, labels = make_logits(rng), rng.integers(0, 5, 12)
    targets = multilabel_targets(rng)
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1])
    keep = mask.astype(bool)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels, mask=mask),
        losses.softmax_cross_entropy(logits[keep], labels[keep]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(logits, targets, mask=mask),
        losses.sigmoid_binary_cross_entropy(logits[keep], targets[keep]),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(losses.softmax_cross_entropy(logits, labels, mask=0 * mask), 0.0)


def test_masked_bce_equals_torch_bce_with_logits_over_known_entries():
    rng = np.random.default_rng(2)
    logits, targets = make_logits(rng), multilabel_targets(rng)
    known = ~np.isnan(targets)
    assert 0 < known.sum() < known.size
    want = F.binary_cross_entropy_with_logits(
        torch.tensor(logits)[torch.tensor(known)], torch.tensor(targets)[torch.tensor(known)]
    )
    got = losses.sigmoid_binary_cross_entropy(logits, targets)
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)
    # Gradients: finite, zero on unknown entries, equal to torch's on the known ones.
    grad = np.asarray(jax.grad(losses.sigmoid_binary_cross_entropy)(jnp.asarray(logits), targets))
    t_logits = torch.tensor(logits, requires_grad=True)
    F.binary_cross_entropy_with_logits(
        t_logits[torch.tensor(known)], torch.tensor(targets)[torch.tensor(known)]
    ).backward()
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, t_logits.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_bce_with_no_known_entry_is_zero_not_nan():
    logits = jnp.ones((3, 4))
    targets = jnp.full((3, 4), jnp.nan)
    assert float(losses.sigmoid_binary_cross_entropy(logits, targets)) == 0.0
    grad = jax.grad(losses.sigmoid_binary_cross_entropy)(logits, targets)
    np.testing.assert_array_equal(grad, 0.0)


def test_bf16_logits_are_computed_in_float32():
    rng = np.random.default_rng(3)
    logits, labels = make_logits(rng), rng.integers(0, 5, 12)
    low = jnp.asarray(logits, jnp.bfloat16)
    got = losses.softmax_cross_entropy(low, labels)
    assert got.dtype == jnp.float32
    rounded = torch.tensor(np.asarray(low, np.float32))
    want = torch.nn.CrossEntropyLoss()(rounded, torch.tensor(labels))
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)


def test_classification_loss_dispatch_and_errors():
    rng = np.random.default_rng(4)
    logits = make_logits(rng)
    labels, targets = rng.integers(0, 5, 12), multilabel_targets(rng)
    single = losses.softmax_cross_entropy(logits, labels)
    assert losses.classification_loss(logits, labels) == single
    assert losses.classification_loss(logits, targets) == losses.sigmoid_binary_cross_entropy(
        logits, targets
    )
    with pytest.raises(ValueError, match=r"labels \(3,\)"):
        losses.softmax_cross_entropy(logits, labels[:3])
    with pytest.raises(ValueError, match=r"targets \(12, 4\)"):
        losses.sigmoid_binary_cross_entropy(logits, targets[:, :4])
    with pytest.raises(ValueError, match=r"mask must have shape \(12,\)"):
        losses.softmax_cross_entropy(logits, labels, mask=np.ones(11))


def batch(rng, b=8, c=3):
    return {
        "image": jnp.asarray(rng.standard_normal((b, 4, 4, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, c, b)),
    }


def test_mixup_mixes_images_and_keeps_the_label_mass():
    rng = np.random.default_rng(5)
    data = batch(rng)
    out = jax.jit(losses.mixup, static_argnums=(2, 3))(jax.random.key(0), data, 0.4, 3)
    lam = float(out["lam"])
    assert 0.0 < lam < 1.0
    # Partners are a permutation of the batch: recover it from the labels' images.
    x = np.asarray(data["image"])
    partner = (np.asarray(out["image"]) - lam * x) / (1 - lam)
    perm = [int(np.argmin(np.abs(x - p).reshape(len(x), -1).max(1))) for p in partner]
    assert sorted(perm) == list(range(len(x)))
    np.testing.assert_allclose(out["image"], lam * x + (1 - lam) * x[perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["label_b"], np.asarray(data["label"])[perm])
    np.testing.assert_allclose(np.asarray(out["mixed_label"]).sum(1), 1.0, rtol=1e-6)
    onehot = np.eye(3)[np.asarray(data["label"])]
    np.testing.assert_allclose(
        out["mixed_label"], lam * onehot + (1 - lam) * onehot[perm], rtol=1e-6, atol=1e-7
    )


def test_mixup_loss_is_the_lambda_mix_of_two_losses():
    rng = np.random.default_rng(6)
    data = batch(rng, c=5)
    out = losses.mixup(jax.random.key(1), data, 0.4, 5, lam=0.3)
    logits = make_logits(rng, b=8)
    lam = float(out["lam"])
    t_logits = torch.tensor(logits)
    ce = torch.nn.CrossEntropyLoss()
    want = lam * ce(t_logits, torch.tensor(np.asarray(out["label_a"], np.int64))) + (
        1 - lam
    ) * ce(t_logits, torch.tensor(np.asarray(out["label_b"], np.int64)))
    got = losses.mixup_loss(logits, out["label_a"], out["label_b"], out["lam"])
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)
    # Linear in the target: the same as cross-entropy against the mixed soft label.
    soft = -(np.asarray(out["mixed_label"]) * np.asarray(jax.nn.log_softmax(logits))).sum(1).mean()
    np.testing.assert_allclose(got, soft, rtol=1e-5)


def test_multilabel_mixup_loss_masks_each_side():
    rng = np.random.default_rng(7)
    data = {"image": jnp.zeros((12, 2, 2, 1)), "label": jnp.asarray(multilabel_targets(rng))}
    out = losses.mixup(jax.random.key(2), data, 0.4, 5, lam=0.7)
    logits = make_logits(rng)
    lam = float(out["lam"])

    def torch_bce(y):
        y = np.asarray(y)
        known = torch.tensor(~np.isnan(y))
        t_logits, t_y = torch.tensor(logits)[known], torch.tensor(y)[known]
        return F.binary_cross_entropy_with_logits(t_logits, t_y)

    want = lam * torch_bce(out["label_a"]) + (1 - lam) * torch_bce(out["label_b"])
    got = losses.mixup_loss(logits, out["label_a"], out["label_b"], out["lam"])
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)


def test_mixup_pairs_real_rows_with_real_rows():
    rng = np.random.default_rng(8)
    data = batch(rng, b=10)
    mask = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1, 1])
    data["image"] = data["image"].at[mask == 0].set(0.0)
    data["mask"] = jnp.asarray(mask)
    fn = jax.jit(losses.mixup, static_argnums=(2, 3))
    for seed in range(5):
        out = fn(jax.random.key(seed), data, 1.0, 3, lam=0.1 + 0.15 * seed)
        lam = float(out["lam"])
        # A padded (zero) partner would leave a real row scaled by exactly lam.
        real = np.asarray(data["image"])[mask == 1]
        mixed = np.asarray(out["image"])[mask == 1]
        assert not np.any(np.all(np.isclose(mixed, lam * real), axis=(1, 2, 3)))
        np.testing.assert_array_equal(np.asarray(out["image"])[mask == 0], 0.0)
        np.testing.assert_array_equal(out["mask"], mask)


def test_mixup_alpha_zero_is_the_identity_and_given_lambda_is_used():
    rng = np.random.default_rng(9)
    data = batch(rng)
    out = losses.mixup(jax.random.key(0), data, 0.0, 3)
    np.testing.assert_array_equal(out["image"], data["image"])
    np.testing.assert_array_equal(out["label_b"], data["label"])
    assert float(out["lam"]) == 1.0
    out = losses.mixup(jax.random.key(0), data, 0.1, 3, lam=0.25)
    assert float(out["lam"]) == 0.25
    with pytest.raises(ValueError, match=r"no 'label' entry.*\['image'\]"):
        losses.mixup(jax.random.key(0), {"image": data["image"]}, 0.1, 3)


def test_mixup_lambda_follows_beta_alpha_alpha():
    keys = jax.random.split(jax.random.key(3), 4000)
    lam = np.asarray(jax.vmap(lambda k: losses.sample_mixup_lambda(k, 0.1))(keys), np.float64)
    beta = scipy.stats.beta(0.1, 0.1)
    # Beta(0.1, 0.1) puts ~10% of its mass within float32 rounding of 1 (those draws are
    # exactly 1.0), so compare the interior with a KS test and the tails by their mass.
    lo, hi = 1e-3, 1 - 1e-3
    inside = lam[(lam > lo) & (lam < hi)]
    f_lo, f_hi = beta.cdf(lo), beta.cdf(hi)
    result = scipy.stats.kstest(inside, lambda x: (beta.cdf(x) - f_lo) / (f_hi - f_lo))
    assert result.pvalue > 1e-3, result
    for frac, p in [(np.mean(lam <= lo), f_lo), (np.mean(lam >= hi), 1 - f_hi)]:
        assert abs(frac - p) < 5 * np.sqrt(p * (1 - p) / lam.size), (frac, p)
    assert float(losses.sample_mixup_lambda(keys[0], 0.0)) == 1.0
