"""A transfer always starts from a new head, drawn as the reference's ``nn.Conv2d`` default.

Reference: SLAMPAI/large-scale-pretraining-transfer, transfer_learning/models/builder.py
(``load_from_checkpoint`` replaces ``model.head.conv`` by a fresh ``torch.nn.Conv2d(C, K, 1,
bias=True)`` whatever the class counts).
"""

import numpy as np
import pytest
import torch

import bit_medical
from bit_medical import experiment, train
from bit_medical.models import bit

import run_helpers

FEATURES = 1024  # BiT-R14x0.5's pre-logit width


@pytest.fixture(scope="module")
def source_npz(tmp_path_factory):
    """A 'pre-trained' BiT-R14x0.5 with a trained-looking (non-zero) 5-class head."""
    path = tmp_path_factory.mktemp("source") / "source.npz"
    return str(path), run_helpers.random_npz(path, 5)


def _torch_head(features, classes, seed):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(features, classes, kernel_size=1, bias=True)
    return conv.weight.detach().numpy().ravel(), conv.bias.detach().numpy()


def test_reference_init_has_the_bounds_and_moments_of_torch_conv2d():
    # Many classes, so the bias (one value per class) has enough samples for its moments.
    classes = 6000
    ours = bit.new_head(FEATURES, classes, "reference", seed=0)["conv2d"]
    assert ours["kernel"].shape == (1, 1, FEATURES, classes)
    assert ours["bias"].shape == (classes,)
    theirs = dict(zip(("kernel", "bias"), _torch_head(FEATURES, classes, seed=0)))
    bound = 1 / np.sqrt(FEATURES)
    for name in ("kernel", "bias"):
        a, b = np.ravel(ours[name]), theirs[name]
        assert a.dtype == np.float32
        # Same support: both within +-1/sqrt(fan_in) and reaching close to it.
        assert np.abs(a).max() <= bound and np.abs(b).max() <= bound
        assert np.abs(a).max() > 0.99 * bound and np.abs(b).max() > 0.99 * bound
        # Same first moments as torch's draw, and as U(-bound, bound): mean 0, var bound^2 / 3.
        se_mean = bound / np.sqrt(3 * a.size)
        assert abs(a.mean() - b.mean()) < 8 * se_mean, name
        np.testing.assert_allclose(a.var(), b.var(), rtol=8 / np.sqrt(a.size) + 0.01)
        np.testing.assert_allclose(a.var(), bound**2 / 3, rtol=8 / np.sqrt(a.size) + 0.01)
        # Same shape of distribution (uniform): the fraction in the inner half of the range.
        assert abs(np.mean(np.abs(a) < bound / 2) - 0.5) < 0.02
        assert abs(np.mean(np.abs(b) < bound / 2) - 0.5) < 0.02


def test_seeds_draw_different_heads_and_a_seed_draws_one(source_npz):
    path, _ = source_npz
    heads = [bit_medical.load_model(path, 3, seed=s)[1]["params"]["head"]["conv2d"]
             for s in (0, 0, 1)]
    np.testing.assert_array_equal(heads[0]["kernel"], heads[1]["kernel"])
    np.testing.assert_array_equal(heads[0]["bias"], heads[1]["bias"])
    assert not np.allclose(heads[0]["kernel"], heads[2]["kernel"])
    assert not np.allclose(heads[0]["bias"], heads[2]["bias"])


def test_same_class_count_transfer_gets_a_new_head(source_npz):
    path, source = source_npz
    _, kept = bit_medical.load_model(path)  # num_classes=None: the trained head as it is
    np.testing.assert_array_equal(kept["params"]["head"]["conv2d"]["kernel"],
                                  source["head"]["conv2d"]["kernel"])
    for head_init in ("reference", "zero"):
        model, variables = bit_medical.load_model(path, 5, head_init=head_init, seed=3)
        head = variables["params"]["head"]["conv2d"]
        assert model.num_classes == 5 and model.head_init == head_init
        assert not np.allclose(head["kernel"], source["head"]["conv2d"]["kernel"])
        expected = bit.new_head(FEATURES, 5, head_init, seed=3)["conv2d"]
        np.testing.assert_array_equal(head["kernel"], expected["kernel"])
        np.testing.assert_array_equal(head["bias"], expected["bias"])
        if head_init == "zero":
            assert not np.any(head["kernel"]) and not np.any(head["bias"])
        # The body is the checkpoint's, untouched.
        np.testing.assert_array_equal(
            variables["params"]["block1"]["unit01"]["a"]["standardized_conv2d"]["kernel"],
            source["block1"]["unit01"]["a"]["standardized_conv2d"]["kernel"])


def test_the_train_loop_builds_transfers_with_the_configs_head(source_npz):
    path, source = source_npz
    config = experiment.base()
    config.pretrained, config.seed = path, 7
    _, params = train.build_model(config, 5, load_weights=True)
    expected = bit.new_head(FEATURES, 5, "reference", seed=7)["conv2d"]
    np.testing.assert_array_equal(params["head"]["conv2d"]["bias"], expected["bias"])
    config.head_init = "zero"
    _, params = train.build_model(config, 5, load_weights=True)
    assert not np.any(params["head"]["conv2d"]["kernel"])


def test_released_weights_keep_their_own_results_name():
    config = experiment.base()
    config.pretrained = "BiT-M-R50x1"
    assert train.pretrained_model_tag(config, bit.PUBLISHED["BiT-M-R50x1"]) == "bit_m_r50x1"
    config.pretrained = "BiT-S-R152x4"
    assert train.pretrained_model_tag(config, bit.PUBLISHED["BiT-S-R152x4"]) == "bit_s_r152x4"
