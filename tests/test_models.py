"""BiT model and checkpoint interoperability, checked against timm's independent implementation."""

import os
import urllib.error

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.models.resnetv2 import _load_weights as timm_load_npz

import bit_medical
from bit_medical.models import bit, convert, export, pretrained
from bit_medical.models.convert import CheckpointError

NUM_CLASSES = 10
IMAGE_SIZE = 128


def _timm_r50x1(seed=0):
    """timm's BiT-R50x1 with random weights and non-trivial GroupNorm affine parameters."""
    torch.manual_seed(seed)
    model = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=NUM_CLASSES)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # GroupNorm weight/bias: default 1/0 would hide mix-ups
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif name.startswith("head") and name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def _timm_to_official_npz(model, path):
    """Writes timm weights in the official BiT .npz naming: the test's own map, not ours."""
    arrays = {}

    def put(key, w):
        w = w.detach().numpy()
        arrays["resnet/" + key] = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w

    sd = model.state_dict()
    put("root_block/standardized_conv2d/kernel", sd["stem.conv.weight"])
    put("group_norm/gamma", sd["norm.weight"])
    put("group_norm/beta", sd["norm.bias"])
    put("head/conv2d/kernel", sd["head.fc.weight"])
    put("head/conv2d/bias", sd["head.fc.bias"])
    for key, w in sd.items():
        parts = key.split(".")
        if parts[0] != "stages" or parts[2] != "blocks":
            continue
        unit = f"block{int(parts[1]) + 1}/unit{int(parts[3]) + 1:02d}"
        layer, leaf = parts[4], parts[-1]
        if layer.startswith("conv"):
            put(f"{unit}/{'abc'[int(layer[-1]) - 1]}/standardized_conv2d/kernel", w)
        elif layer.startswith("norm"):
            put(f"{unit}/{'abc'[int(layer[-1]) - 1]}/group_norm/"
                f"{'gamma' if leaf == 'weight' else 'beta'}", w)
        elif layer == "downsample":
            put(f"{unit}/a/proj/standardized_conv2d/kernel", w)
    np.savez(path, **arrays)


def _timm_to_reference_state_dict(model):
    """Renames timm's keys to the reference code's (BiT bit_pytorch) naming."""
    out = {}
    for key, w in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "stem":
            out["root.conv.weight"] = w
        elif parts[0] == "norm":
            out[f"head.gn.{parts[1]}"] = w
        elif parts[0] == "head":
            out[f"head.conv.{parts[-1]}"] = w
        else:
            unit = f"body.block{int(parts[1]) + 1}.unit{int(parts[3]) + 1:02d}"
            layer = parts[4].replace("norm", "gn")
            if layer == "downsample":
                out[f"{unit}.downsample.weight"] = w
            else:
                out[f"{unit}.{layer}.{parts[-1]}"] = w
    return out


def _random_params(model, seed=0):
    """Random parameters of ``model`` from its shapes (cheaper than compiling ``model.init``).

    GroupNorm affines and the head are non-trivial, so a swapped gamma/beta or a transposed
    kernel changes the logits.
    """
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = path[-1].key
        base = {"gamma": 1.0}.get(name, 0.0)
        scale = 0.2 if name in ("gamma", "beta", "bias") else 0.05
        return (base + scale * rng.standard_normal(shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, bit.param_shapes(model))


def _timm_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _assert_close(ours, ref, rtol=1e-4):
    """Max abs difference relative to the logits' scale."""
    err = np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref))
    assert err <= rtol, f"relative max abs difference {err:.2e} > {rtol}"


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
        np.float32)


@pytest.fixture(scope="module")
def timm_model():
    return _timm_r50x1()


@pytest.fixture(scope="module")
def official_npz(tmp_path_factory, timm_model):
    path = tmp_path_factory.mktemp("npz") / "random_r50x1.npz"
    _timm_to_official_npz(timm_model, path)
    return path


@pytest.fixture(scope="module")
def r50_apply():
    """One compiled forward pass of R50x1 shared by the tests (compilation dominates on CPU)."""
    model = bit.create_model("BiT-S-R50x1", NUM_CLASSES)
    return jax.jit(model.apply)


def test_npz_logits_match_timm_loading_the_same_file(official_npz, images, r50_apply):
    reference = timm.create_model("resnetv2_50x1_bit", pretrained=False,
                                  num_classes=NUM_CLASSES).eval()
    timm_load_npz(reference, str(official_npz))
    model, variables = bit_medical.load_model(official_npz)
    assert model.num_classes == NUM_CLASSES and model.block_units == (3, 4, 6, 3)
    _assert_close(r50_apply(variables, images), _timm_logits(reference, images))


def test_save_npz_is_read_by_timm(tmp_path, images, r50_apply):
    params = _random_params(bit.create_model("BiT-S-R50x1", NUM_CLASSES), seed=2)
    path = tmp_path / "ours.npz"
    convert.save_npz(params, path)
    reference = timm.create_model("resnetv2_50x1_bit", pretrained=False,
                                  num_classes=NUM_CLASSES).eval()
    timm_load_npz(reference, str(path))
    _assert_close(r50_apply({"params": params}, images), _timm_logits(reference, images))


def test_npz_roundtrip_is_identical(official_npz, tmp_path):
    params = convert.params_from_npz(official_npz)
    out = tmp_path / "again.npz"
    convert.save_npz(params, out)
    with np.load(official_npz) as a, np.load(out) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("layout", ["reference_checkpoint", "bare_state_dict", "timm_state_dict"])
def test_pytorch_checkpoints_load_to_the_same_logits(layout, timm_model, images, r50_apply,
                                                     tmp_path):
    if layout == "reference_checkpoint":
        path = tmp_path / "model.pth.tar"
        torch.save({"step": 500, "model": _timm_to_reference_state_dict(timm_model),
                    "optim": {"state": {}, "param_groups": []}}, path)
    elif layout == "bare_state_dict":
        path = tmp_path / "model.pth"
        torch.save(_timm_to_reference_state_dict(timm_model), path)
    else:
        path = tmp_path / "model.pt"
        torch.save(timm_model.state_dict(), path)
    model, variables = bit_medical.load_model(path)
    _assert_close(r50_apply(variables, images), _timm_logits(timm_model, images))


# Released sizes: timm's registry of the same checkpoints (BiT-S heads 1000, BiT-M 21843).
PUBLISHED_PARAM_COUNTS = {
    "BiT-S-R50x1": 25_549_352, "BiT-M-R50x1": 68_256_659,
    "BiT-S-R50x3": 217_319_080, "BiT-M-R50x3": 345_399_315,
    "BiT-S-R101x1": 44_541_480, "BiT-M-R101x1": 87_248_787,
    "BiT-S-R101x3": 387_934_888, "BiT-M-R101x3": 516_015_123,
    "BiT-S-R152x2": 236_335_208, "BiT-M-R152x2": 321_728_979,
    "BiT-S-R152x4": 936_533_224, "BiT-M-R152x4": 1_107_299_923,
}
_TIMM_NAMES = {"R50x1": "resnetv2_50x1_bit", "R50x3": "resnetv2_50x3_bit",
               "R101x1": "resnetv2_101x1_bit", "R101x3": "resnetv2_101x3_bit",
               "R152x2": "resnetv2_152x2_bit", "R152x4": "resnetv2_152x4_bit"}


@pytest.mark.parametrize("name", sorted(bit.PUBLISHED))
def test_parameter_counts_equal_published(name):
    family, tag = name.split("-")[1:]
    classes = bit.PUBLISHED_NUM_CLASSES[family]
    ours = bit.num_params(bit.create_model(name, classes))
    with torch.device("meta"):  # shapes only: R152x4 would otherwise take ~4 GB
        reference = timm.create_model(_TIMM_NAMES[tag], pretrained=False, num_classes=classes)
    assert ours == sum(p.numel() for p in reference.parameters())
    assert ours == PUBLISHED_PARAM_COUNTS[name]


def test_parameter_names_mirror_official_checkpoint(official_npz):
    model = bit.create_model("BiT-S-R50x1", NUM_CLASSES)
    ours = set(convert.npz_arrays(jax.tree_util.tree_map(np.zeros_like,
                                                         bit.param_shapes(model))))
    with np.load(official_npz) as npz:
        assert ours == set(npz.files)


# ----------------------------------------------------------------------------- options


def test_new_num_classes_with_zero_head_init(official_npz, images):
    model, variables = bit_medical.load_model(official_npz, num_classes=3, head_init="zero")
    head = variables["params"]["head"]["conv2d"]
    assert head["kernel"].shape == (1, 1, 2048, 3)
    assert not np.any(head["kernel"]) and not np.any(head["bias"])
    np.testing.assert_array_equal(model.apply(variables, images[:1, :64, :64]), np.zeros((1, 3)))


def test_small_variant_dtype_remat_and_features():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    model = bit.create_model("BiT-R14x0.5", 5)
    variables = {"params": _random_params(model)}
    features = jax.jit(lambda v, x: model.apply(v, x, pre_logits=True))(variables, x)
    assert features.shape == (2, 1024)
    logits = jax.jit(model.apply)(variables, x)
    w = variables["params"]["head"]["conv2d"]
    np.testing.assert_allclose(logits, features @ w["kernel"][0, 0] + w["bias"], rtol=1e-5,
                               atol=1e-5)

    def loss(params, m):
        return jnp.mean(m.apply({"params": params}, x) ** 2)

    rematted = bit.create_model("BiT-R14x0.5", 5, remat=True)
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_plain = grad(variables["params"], model)
    g_remat = grad(variables["params"], rematted)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           g_plain, g_remat)

    half = bit.create_model("BiT-R14x0.5", 5, dtype=jnp.bfloat16)
    out = jax.jit(half.apply)(variables, x)
    assert out.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(
        jax.eval_shape(half.init, jax.random.key(0), x)))
    np.testing.assert_allclose(np.asarray(out, np.float32), logits, atol=0.1 * np.abs(logits).max())


def test_head_init_option_of_models_from_scratch():
    x = np.zeros((1, 32, 32, 3), np.float32)
    zero = jax.jit(bit.create_model("BiT-R14x0.5", 4, head_init="zero").init)(jax.random.key(0), x)
    default = jax.jit(bit.create_model("BiT-R14x0.5", 4).init)(jax.random.key(0), x)
    assert not np.any(zero["params"]["head"]["conv2d"]["kernel"])
    assert not np.any(zero["params"]["head"]["conv2d"]["bias"])
    # PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), here fan_in = 1024,
    # for the kernel and the bias alike.
    for name in ("kernel", "bias"):
        values = np.abs(default["params"]["head"]["conv2d"][name])
        assert 0 < values.max() <= 1 / np.sqrt(1024), name
    assert np.abs(default["params"]["head"]["conv2d"]["kernel"]).max() > 0.9 / np.sqrt(1024)
    with pytest.raises(ValueError, match="unknown head_init 'ones'; valid: reference, zero"):
        bit.create_model("BiT-R14x0.5", 4, head_init="ones")


def test_create_model_errors_list_valid_choices():
    with pytest.raises(ValueError, match="BiT-M-R152x4"):
        bit.create_model("BiT-X-R50x1", 10)
    with pytest.raises(TypeError, match="remat"):
        bit.create_model("BiT-R14x0.5", 10, rematt=True)
    with pytest.raises(ValueError, match="num_classes"):
        bit.create_model("BiT-R14x0.5", 0)


def test_export_roundtrip_with_plain_orbax(tmp_path):
    import orbax.checkpoint as ocp

    model = bit.create_model("BiT-R14x0.5", 3)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    params = _random_params(model, seed=3)
    export.save(tmp_path / "run" / "export", params,
                {"model": "BiT-R14x0.5", "num_classes": 3, "label_names": ["a", "b", "c"]})
    restored = ocp.StandardCheckpointer().restore(str(tmp_path / "run" / "export" / "params"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, jax.device_get(params))
    loaded, variables = bit_medical.load_model(tmp_path / "run")
    np.testing.assert_allclose(loaded.apply(variables, x), model.apply({"params": params}, x),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- bad checkpoints


@pytest.fixture
def small_npz(tmp_path):
    model = bit.create_model("BiT-R14x0.5", 4)
    params = _random_params(model)
    path = tmp_path / "small.npz"
    convert.save_npz(params, path)
    return path


def _rewrite(path, edit):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    np.savez(path, **arrays)


def test_missing_key_is_named(small_npz):
    _rewrite(small_npz, lambda a: a.pop("resnet/block2/unit01/b/group_norm/gamma"))
    with pytest.raises(CheckpointError,
                       match=r"missing block2/unit01/b/group_norm/gamma \(expected shape \(64,\)"):
        bit_medical.load_model(small_npz)


def test_extra_key_is_named(small_npz):
    _rewrite(small_npz, lambda a: a.update({"resnet/block1/unit01/a/extra": np.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected block1/unit01/a/extra \(shape \(3,\)"):
        bit_medical.load_model(small_npz)


def test_wrong_shape_names_parameter_and_both_shapes(small_npz):
    _rewrite(small_npz, lambda a: a.update(
        {"resnet/block3/unit01/b/standardized_conv2d/kernel": np.zeros((3, 3, 128, 64))}))
    with pytest.raises(CheckpointError, match=(
            r"block3/unit01/b/standardized_conv2d/kernel: expected shape \(3, 3, 128, 128\), "
            r"found \(3, 3, 128, 64\)")):
        bit_medical.load_model(small_npz)


def test_unreadable_files_are_named(tmp_path):
    for name in ("garbage.npz", "garbage.pth"):
        path = tmp_path / name
        path.write_bytes(b"\x00not a checkpoint" * 10)
        with pytest.raises(CheckpointError, match=name):
            bit_medical.load_model(path)
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        bit_medical.load_model(odd)
    with pytest.raises(FileNotFoundError, match="neither a released BiT name"):
        bit_medical.load_model(tmp_path / "nowhere.npz")


def test_foreign_state_dict_is_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
    with pytest.raises(CheckpointError, match="not a BiT state_dict"):
        bit_medical.load_model(path)
    sd = _timm_to_reference_state_dict(_timm_r50x1())
    sd["body.block1.unit01.se.weight"] = torch.zeros(3)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"unexpected parameter\(s\) \['body.block1.unit01.se"):
        bit_medical.load_model(path)


def test_released_name_uses_cache_and_checks_architecture(small_npz, official_npz, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("BIT_MEDICAL_CACHE", str(tmp_path / "cache"))
    os.makedirs(tmp_path / "cache")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", no_network)
    expected = str(tmp_path / "cache" / "BiT-M-R50x1.npz")
    with pytest.raises(CheckpointError) as err:
        bit_medical.load_model("BiT-M-R50x1")
    assert "https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz" in str(err.value)
    assert expected in str(err.value)
    assert not os.listdir(tmp_path / "cache")  # no partial download left behind

    os.symlink(official_npz, expected)
    model, variables = bit_medical.load_model("BiT-M-R50x1", num_classes=7)
    assert model.num_classes == 7 and model.block_units == (3, 4, 6, 3)

    os.symlink(small_npz, tmp_path / "cache" / "BiT-S-R101x1.npz")
    with pytest.raises(CheckpointError, match="holds a R14x0.5 but BiT-S-R101x1 is a R101x1"):
        bit_medical.load_model("BiT-S-R101x1")
