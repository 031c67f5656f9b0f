"""bit_medical.hyperrule against the BiT-HyperRule of the reference (bit_hyperrule.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_medical import hyperrule

# The reference's size classes: (largest size of the class, first size of the next class,
# supports). Written out here, independently of the module's table.
SIZE_CLASSES = [
    (19_999, 20_000, (100, 200, 300, 400, 500)),
    (499_999, 500_000, (500, 3000, 6000, 9000, 10_000)),
    (10**8, None, (500, 6000, 12_000, 18_000, 20_000)),
]


def official_get_lr(step, dataset_size_supports, base_lr):
    """get_lr(step) of bit_hyperrule.py as its rule reads; None from the last support on."""
    supports = dataset_size_supports
    if step < supports[0]:
        return base_lr * step / supports[0]
    if step >= supports[-1]:
        return None
    for s in supports[1:]:
        if s < step:
            base_lr /= 10
    return base_lr


def probe_steps(supports):
    steps = {0, 1, 2, supports[-1] + 1, 10 * supports[-1]}
    for s in supports:
        steps |= {s - 1, s, s + 1}
    return sorted(steps)


@pytest.mark.parametrize("largest, _next, supports", SIZE_CLASSES)
def test_lr_schedule_equals_get_lr_around_every_boundary(largest, _next, supports):
    base_lr = 0.001
    schedule = hyperrule.lr_schedule(base_lr, largest)
    final = official_get_lr(supports[-1] - 1, supports, base_lr)  # get_final_lr
    steps = probe_steps(supports)
    got = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))
    for step, value in zip(steps, got, strict=True):
        want = official_get_lr(step, supports, base_lr)
        want = final if want is None else want  # past the end: training goes on at the final lr
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=0, err_msg=f"step {step}")


def test_lr_schedule_hand_table_small_class():
    # Read off the rule by hand: warm-up 0 -> 1e-3 over 100 steps, drops *after* 200/300/400.
    s = hyperrule.lr_schedule(0.001, 1_000)
    table = {
        0: 0.0, 1: 1e-5, 50: 5e-4, 99: 9.9e-4, 100: 1e-3, 200: 1e-3, 201: 1e-4,
        300: 1e-4, 301: 1e-5, 400: 1e-5, 401: 1e-6, 499: 1e-6, 500: 1e-6, 5_000: 1e-6,
    }
    for step, want in table.items():
        np.testing.assert_allclose(float(s(step)), want, rtol=1e-6, atol=0, err_msg=f"step {step}")


@pytest.mark.parametrize("largest, first_of_next, supports", SIZE_CLASSES)
def test_size_classes_and_their_edges(largest, first_of_next, supports):
    assert hyperrule.schedule_boundaries(largest) == supports
    assert hyperrule.schedule_boundaries(1 if supports[0] == 100 else largest) == supports
    assert hyperrule.train_steps(largest) == supports[-1]
    if first_of_next is not None:
        assert hyperrule.schedule_boundaries(first_of_next) != supports


def test_mixup_alpha_threshold():
    assert hyperrule.mixup_alpha(1) == 0.0
    assert hyperrule.mixup_alpha(19_999) == 0.0
    assert hyperrule.mixup_alpha(20_000) == 0.1
    assert hyperrule.mixup_alpha(math.inf) == 0.1


@pytest.mark.parametrize(
    "hw, want",
    [
        ((32, 32), (160, 128)),  # CIFAR
        ((95, 96), (160, 128)),  # area 9120 < 9216
        ((96, 96), (512, 480)),  # area == 96*96 is not "< 96*96"
        ((48, 200), (512, 480)),
        ((224, 224), (512, 480)),
    ],
)
def test_resolution(hw, want):
    assert hyperrule.resolution(hw) == want


def test_fixed_length_rule_of_the_paper():
    # finetune.py --steps: get_max_train_set maps 500 -> 19 999, 10 000 -> 499 999, 20 000 -> inf.
    assert hyperrule.size_for_steps(500) == 19_999
    assert hyperrule.size_for_steps(10_000) == 499_999
    assert hyperrule.size_for_steps(20_000) == math.inf

    few = hyperrule.finetune_schedule(50_000, shots=10)  # size ignored by the paper rule
    assert few == (500, (100, 200, 300, 400, 500), 19_999, 0.0)
    full = hyperrule.finetune_schedule(5_000)  # a small set still gets 10 000 steps and mixup
    assert full == (10_000, (500, 3000, 6000, 9000, 10_000), 499_999, 0.1)
    np.testing.assert_allclose(float(full.lr_schedule(0.001)(3001)), 1e-4, rtol=1e-6)
    assert hyperrule.schedule_for_steps(20_000).boundaries == (500, 6000, 12_000, 18_000, 20_000)


def test_official_size_rule():
    assert hyperrule.finetune_schedule(50, shots=5, rule="bit") == (
        500, (100, 200, 300, 400, 500), 50, 0.0)
    assert hyperrule.finetune_schedule(50_000, rule="bit") == (
        10_000, (500, 3000, 6000, 9000, 10_000), 50_000, 0.1)
    assert hyperrule.finetune_schedule(1_281_167, rule="bit").total_steps == 20_000


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"'auto'.*\['paper', 'bit'\]"):
        hyperrule.finetune_schedule(100, rule="auto")
    with pytest.raises(ValueError, match=r"\[500, 10000, 20000\] steps, got 1000"):
        hyperrule.size_for_steps(1000)
    with pytest.raises(ValueError, match="dataset_size must be >= 1"):
        hyperrule.schedule_boundaries(0)
    with pytest.raises(ValueError, match="shots"):
        hyperrule.finetune_schedule(100, shots=0)
    with pytest.raises(ValueError, match=r"\(height, width\)"):
        hyperrule.resolution(224)
