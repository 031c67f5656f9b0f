"""Converting BiT weights between this project's parameter tree and other formats.

Formats:

* the official BiT ``.npz`` (``resnet/block1/unit01/a/standardized_conv2d/kernel``, HWIO
  kernels, GroupNorm ``gamma``/``beta`` of shape (C,)): our tree with a ``resnet/`` prefix;
* PyTorch state_dicts of the reference code (BiT's ``bit_pytorch`` naming,
  ``body.block1.unit01.conv1.weight``), bare or as ``{"model": state_dict, ...}``;
* timm's ``resnetv2_*_bit`` state_dicts (``stages.0.blocks.0.conv1.weight``).

Every loader returns a nested dict of float32 numpy arrays; :func:`check_params` compares it
against a model's expected shapes and raises one :class:`CheckpointError` listing every missing,
unexpected or mis-shaped parameter, so nothing is skipped silently.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from bit_medical import paths

NPZ_PREFIX = "resnet/"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: unreadable, or not the expected model."""


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
    return traverse_util.unflatten_dict(flat, sep="/")


# --------------------------------------------------------------------------- official .npz


def params_from_npz(source: str | os.PathLike | Mapping[str, np.ndarray]) -> dict:
    """Reads an official BiT ``.npz`` (a path, or an already loaded mapping) into params."""
    if isinstance(source, Mapping):
        arrays, where = dict(source), "the given arrays"
    else:
        where = os.fspath(source)
        try:
            with paths.path(where).open("rb") as f, np.load(f, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise CheckpointError(f"Cannot read {where} as a BiT .npz file: {e}") from e
    foreign = sorted(k for k in arrays if not k.startswith(NPZ_PREFIX))
    if foreign:
        raise CheckpointError(
            f"{where} is not in the BiT .npz layout: keys must start with {NPZ_PREFIX!r}, "
            f"found {foreign[:5]}")
    return unflatten({k[len(NPZ_PREFIX):]: np.asarray(v, np.float32) for k, v in arrays.items()})


def npz_arrays(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The flat ``resnet/...`` arrays of the official layout for ``params``."""
    return {NPZ_PREFIX + k: np.asarray(v, np.float32) for k, v in flatten(params).items()}


def save_npz(params: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes ``params`` in the official BiT ``.npz`` layout, readable by timm and BiT's code."""
    # Write through a file object: np.savez would append ".npz" to a path lacking it.
    with paths.path(path).open("wb") as f:
        np.savez(f, **npz_arrays(params))


# --------------------------------------------------------------------------- PyTorch


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _head(w: np.ndarray) -> np.ndarray:
    if w.ndim == 2:  # a Linear head (out, in) -> (1, 1, in, out)
        return w.T[None, None]
    return _conv(w)


_NORM = {"weight": "gamma", "bias": "beta"}
_STEP = {"1": "a", "2": "b", "3": "c"}


def _unit(block: str, unit: str, base: int) -> str:
    """``block{i}/unit{jj}`` from 1-based (reference) or 0-based (timm, base=1) indices."""
    return f"block{int(block) + base}/unit{int(unit) + base:02d}"


# (key pattern, our path from the match, array conversion) for each naming; first match wins.
_REFERENCE_RULES = [
    (r"root\.conv\.weight", lambda m: "root_block/standardized_conv2d/kernel", _conv),
    (r"body\.block(\d+)\.unit(\d+)\.conv([123])\.weight",
     lambda m: f"{_unit(m[1], m[2], 0)}/{_STEP[m[3]]}/standardized_conv2d/kernel", _conv),
    (r"body\.block(\d+)\.unit(\d+)\.gn([123])\.(weight|bias)",
     lambda m: f"{_unit(m[1], m[2], 0)}/{_STEP[m[3]]}/group_norm/{_NORM[m[4]]}", None),
    (r"body\.block(\d+)\.unit(\d+)\.downsample\.weight",
     lambda m: f"{_unit(m[1], m[2], 0)}/a/proj/standardized_conv2d/kernel", _conv),
    (r"head\.gn\.(weight|bias)", lambda m: f"group_norm/{_NORM[m[1]]}", None),
    (r"head\.conv\.weight", lambda m: "head/conv2d/kernel", _head),
    (r"head\.conv\.bias", lambda m: "head/conv2d/bias", None),
]
_TIMM_RULES = [
    (r"stem\.conv\.weight", lambda m: "root_block/standardized_conv2d/kernel", _conv),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv([123])\.weight",
     lambda m: f"{_unit(m[1], m[2], 1)}/{_STEP[m[3]]}/standardized_conv2d/kernel", _conv),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm([123])\.(weight|bias)",
     lambda m: f"{_unit(m[1], m[2], 1)}/{_STEP[m[3]]}/group_norm/{_NORM[m[4]]}", None),
    (r"stages\.(\d+)\.blocks\.(\d+)\.downsample\.conv\.weight",
     lambda m: f"{_unit(m[1], m[2], 1)}/a/proj/standardized_conv2d/kernel", _conv),
    (r"norm\.(weight|bias)", lambda m: f"group_norm/{_NORM[m[1]]}", None),
    (r"head\.fc\.weight", lambda m: "head/conv2d/kernel", _head),
    (r"head\.fc\.bias", lambda m: "head/conv2d/bias", None),
]


def _apply_rules(state_dict: Mapping[str, Any], rules, where: str) -> dict:
    flat, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, path, convert in rules:
            match = re.fullmatch(pattern, key)
            if match:
                array = np.asarray(_to_numpy(value), np.float32)
                flat[path(match)] = convert(array) if convert else array
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{where}: unexpected parameter(s) {unknown[:10]}"
                              + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    return unflatten(flat)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself need not be imported here
        return value.detach().cpu().float().numpy()
    return np.asarray(value)


def params_from_torch(state_dict: Mapping[str, Any], where: str = "state_dict") -> dict:
    """Converts a reference (``body.block1...``) or timm (``stages.0...``) BiT state_dict."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]  # the reference's {"model": ..., "optim": ..., "step": ..}
    elif "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    # DataParallel / DDP wrap names in "module."
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("body.") or k.startswith("root.") for k in state_dict):
        return _apply_rules(state_dict, _REFERENCE_RULES, where)
    if any(k.startswith("stages.") or k.startswith("stem.") for k in state_dict):
        return _apply_rules(state_dict, _TIMM_RULES, where)
    raise CheckpointError(
        f"{where}: not a BiT state_dict (expected names like 'body.block1.unit01.conv1.weight' "
        f"or timm's 'stages.0.blocks.0.conv1.weight'), found {list(state_dict)[:5]}")


def load_torch_file(path: str | os.PathLike) -> dict:
    """Reads a PyTorch checkpoint file (.pth, .pth.tar, .pt) into params (needs torch)."""
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"Reading {path} needs PyTorch: pip install 'bit_medical[torch]'") from e
    try:
        with paths.path(path).open("rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise CheckpointError(f"Cannot read {path} as a PyTorch checkpoint: {e}") from e
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict, found {type(state).__name__}")
    return params_from_torch(state, where=os.fspath(path))


# --------------------------------------------------------------------------- checks


def infer_architecture(params: Mapping[str, Any], where: str = "checkpoint"):
    """Returns ``(block_units, width, num_classes)`` read off a parameter tree."""
    try:
        root = params["root_block"]["standardized_conv2d"]["kernel"]
        head = params["head"]["conv2d"]["kernel"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(
            f"{where}: missing {e} — not a BiT checkpoint (needs root_block/standardized_conv2d/"
            f"kernel and head/conv2d/kernel)") from None
    blocks = sorted((k for k in params if re.fullmatch(r"block\d+", k)), key=lambda k: int(k[5:]))
    units = tuple(len([u for u in params[b] if re.fullmatch(r"unit\d+", u)]) for b in blocks)
    if len(units) != 4 or not all(units):
        raise CheckpointError(f"{where}: expected 4 blocks of units, found {dict(zip(blocks, units))}")
    return units, np.shape(root)[-1] / 64, int(np.shape(head)[-1])


def check_params(params: Mapping[str, Any], expected: Mapping[str, Any],
                 where: str = "checkpoint") -> None:
    """Raises CheckpointError naming every missing, unexpected or mis-shaped parameter."""
    found, want = flatten(params), flatten(expected)
    problems = [f"missing {k} (expected shape {tuple(want[k].shape)})"
                for k in sorted(set(want) - set(found))]
    problems += [f"unexpected {k} (shape {tuple(np.shape(found[k]))})"
                 for k in sorted(set(found) - set(want))]
    problems += [f"{k}: expected shape {tuple(want[k].shape)}, found {tuple(np.shape(found[k]))}"
                 for k in sorted(set(want) & set(found))
                 if tuple(np.shape(found[k])) != tuple(want[k].shape)]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointError(f"{where} does not match the model:\n  {shown}{more}")
