"""``load_model``: a BiT module and its variables from a name, a file or an exported run."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from typing import Any

import jax.numpy as jnp

from bit_medical import paths
from bit_medical.models import bit, convert, export
from bit_medical.models.convert import CheckpointError

BIT_URL = "https://storage.googleapis.com/bit_models/{name}.npz"
TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt")


def cache_dir() -> str:
    """Where downloaded checkpoints live: ``$BIT_MEDICAL_CACHE`` or ``~/.cache/bit_medical``."""
    return os.environ.get("BIT_MEDICAL_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "bit_medical"))


def fetch(name: str) -> str:
    """Path of the official checkpoint ``name`` (e.g. BiT-M-R50x1), downloading it if needed."""
    if name not in bit.PUBLISHED:
        raise ValueError(f"No released checkpoint {name!r}; released: {', '.join(bit.PUBLISHED)}")
    url = BIT_URL.format(name=name)
    path = os.path.join(cache_dir(), f"{name}.npz")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Download beside the target and rename, so an interrupted download leaves no truncated
    # file that a later run would take for the checkpoint.
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0)
            _copy_with_progress(response, out, size, name)
        os.replace(partial, path)
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(
            f"Could not download {name} from {url} ({e}). Without network access, download "
            f"that URL elsewhere and put the file at {path} (or set BIT_MEDICAL_CACHE).") from e
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def _copy_with_progress(src, dst, size: int, name: str) -> None:
    from tqdm import tqdm

    with tqdm(total=size or None, unit="B", unit_scale=True, desc=f"Downloading {name}") as bar:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
            bar.update(len(chunk))


def resolve_source(source: str | os.PathLike) -> str:
    """A released name as given; a path made absolute (``paths.absolute``: ``~``, relative)."""
    source = os.fspath(source)
    return source if source in bit.PUBLISHED else paths.absolute(source)


def load_params(source: str | os.PathLike) -> tuple[dict, dict]:
    """Reads parameters from any supported source; returns ``(params, meta)``.

    ``meta`` holds what the source says about the model besides its weights (``model`` name,
    and for exports the label names and preprocessing).
    """
    given, source = os.fspath(source), resolve_source(source)
    if source in bit.PUBLISHED:
        return convert.params_from_npz(fetch(source)), {"model": source}
    if paths.path(source).is_dir():
        return export.load(source)
    if not paths.path(source).exists():
        raise FileNotFoundError(
            f"{given!r} is neither a released BiT name ({', '.join(bit.PUBLISHED)}) nor an "
            f"existing file or directory")
    if source.endswith(".npz"):
        return convert.params_from_npz(source), {}
    if source.endswith(TORCH_SUFFIXES):
        return convert.load_torch_file(source), {}
    raise CheckpointError(
        f"{source}: unknown checkpoint type; expected .npz, {', '.join(TORCH_SUFFIXES)}, a "
        f"released name or an exported run directory")


def architecture_of(source: str | os.PathLike) -> bit.Architecture:
    """The architecture a source holds, read from names or metadata before any weights."""
    source = resolve_source(source)
    if source in bit.PUBLISHED:
        return bit.PUBLISHED[source]
    if paths.path(source).is_dir():
        meta = export.load_meta(source)
        return bit.Architecture(tuple(meta["block_units"]), meta["width"])
    params, _ = load_params(source)
    units, width, _ = convert.infer_architecture(params, source)
    return bit.Architecture(units, width)


def load_model(source: str | os.PathLike, num_classes: int | None = None, *,
               head_init: str = "reference", seed: int = 0, dtype: Any = jnp.float32,
               remat: bool = False):
    """Loads a BiT model and its variables.

    Args:
      source: a released name (``BiT-M-R50x1``; downloaded to :func:`cache_dir` when online),
        an official ``.npz``, a PyTorch file (``.pth``, ``.pth.tar``, ``.pt``: the reference
        code's ``{"model": state_dict}`` or a bare state_dict in its naming, or a timm
        ``resnetv2_*_bit`` state_dict), or a directory exported by this project.
      num_classes: ``None`` keeps the checkpoint's trained head (to use the model as it was
        trained). Any number, the checkpoint's own included, drops that head and puts a new
        one of this size, as the paper's fine-tuning does (``load_from_checkpoint`` in the
        reference's transfer_learning/models/builder.py always replaces it): the
        source's head was trained for the source's classes, and keeping it when the counts
        happen to agree starts the transfer from a wrong classifier.
      head_init: how the new head is drawn (``bit.HEAD_INITS``): ``reference`` (PyTorch's
        default ``nn.Conv2d`` init, as the paper) or ``zero`` (BiT's recipe).
      seed: draws the new head (different seeds, different heads).
      dtype: compute dtype of the module (parameters stay float32).
      remat: rematerialise units in the backward pass.

    Returns:
      ``(model, variables)`` such that ``model.apply(variables, images)`` gives logits for NHWC
      images in [-1, 1].

    Raises:
      CheckpointError: unreadable file, or weights that do not form the model (names every
        missing, unexpected and mis-shaped parameter with expected and found shapes).
    """
    source = resolve_source(source)
    bit.check_head_init(head_init)
    params, meta = load_params(source)
    units, width, ckpt_classes = convert.infer_architecture(params, source)
    arch = bit.Architecture(units, width)
    if source in bit.PUBLISHED and arch != bit.PUBLISHED[source]:
        raise CheckpointError(
            f"{source}: the file holds a {arch.tag} but {source} is a {bit.PUBLISHED[source].tag}")
    model = bit.BiT(block_units=units, width=width, num_classes=ckpt_classes, dtype=dtype,
                    remat=remat)
    convert.check_params(params, bit.param_shapes(model), source)
    if num_classes is not None:
        features = params["head"]["conv2d"]["kernel"].shape[2]
        params = dict(params, head=bit.new_head(features, num_classes, head_init, seed))
        model = model.clone(num_classes=num_classes, head_init=head_init)
    return model, {"params": params}
