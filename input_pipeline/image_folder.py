"""Class-per-folder image source (torchvision ``ImageFolder`` layout), with a corrupt-file check.

Layout: ``root/<class name>/**/<image>``; classes are the sub-folders of `root` sorted by name
(label i = i-th name), files are found recursively in sorted order, as torchvision does. The
reference's ``template_image_folder`` config has one such folder for training and one for
evaluation; the evaluation folder is read with the training folder's class list so the label
ids agree (torchvision would index the evaluation folder's own classes).

Every file is decoded once before training (in parallel, through tf.data): a corrupt or
unreadable image is an error that names it, unless `skip_corrupt` drops such files (logged
with their count).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf
from etils import epath

from input_pipeline.errors import UserError

# What tf.io.decode_image reads.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# What torchvision's ImageFolder would also take but TensorFlow cannot decode: an error, so a
# folder never silently trains on fewer images than the reference would.
UNSUPPORTED_IMAGE_EXTENSIONS = (".ppm", ".pgm", ".tif", ".tiff")
# Below this many files the check runs without a progress bar.
_PROGRESS_MIN_FILES = 2000
_MAX_NAMED = 20


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """Image files of a class-per-folder tree: parallel arrays of paths and label ids."""
    paths: np.ndarray          # str, sorted by (class, path)
    labels: np.ndarray         # int64 label id of each path
    class_names: list[str]     # label id -> folder name


def _class_folders(root: str) -> list[str]:
    if not epath.Path(root).is_dir():
        raise UserError(f"Image folder {root!r} does not exist or is not a directory")
    names = sorted(p.name for p in epath.Path(root).iterdir() if p.is_dir())
    if not names:
        raise UserError(f"Image folder {root!r} has no class sub-folders (expected root/<class>/<image>)")
    return names


def _list_class(folder: str) -> tuple[list[str], list[str]]:
    """Image files under `folder` (recursive, sorted) and files with unsupported image extensions."""
    found, unsupported = [], []
    # epath lists gs:// folders (TPU VMs keep ImageNet there); local trees are walked through
    # symbolic links too, which epath's walk does not follow.
    walk = epath.Path(folder).walk() if "://" in folder else os.walk(folder, followlinks=True)
    for dirpath, dirnames, filenames in walk:
        dirpath = os.fspath(dirpath)
        dirnames.sort()
        for name in sorted(filenames):
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, name))
            elif ext in UNSUPPORTED_IMAGE_EXTENSIONS:
                unsupported.append(os.path.join(dirpath, name))
    return found, unsupported


def list_image_folder(root: str, class_names: list[str] | None = None) -> FolderListing:
    """Lists `root`'s images; `class_names` (the training folder's) fixes the label ids.

    Raises ValueError for a missing root, no class folders, an empty class folder, a class folder
    unknown to `class_names`, or files TensorFlow cannot decode by extension.
    """
    folders = _class_folders(root)
    if class_names is None:
        class_names = folders
    else:
        unknown = sorted(set(folders) - set(class_names))
        if unknown:
            raise ValueError(f"Image folder {root!r} has class folders not in the training folder: {unknown}; "
                             f"training classes: {list(class_names)[:50]}")
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels, empty, unsupported = [], [], [], []
    for name in folders:
        found, bad_ext = _list_class(os.path.join(root, name))
        unsupported.extend(bad_ext)
        if not found and not bad_ext:
            empty.append(os.path.join(root, name))
        paths.extend(found)
        labels.extend([index[name]] * len(found))
    if unsupported:
        raise ValueError(f"{len(unsupported)} image files in {root!r} have a format TensorFlow cannot decode "
                         f"(convert them to one of {IMAGE_EXTENSIONS}): {unsupported[:_MAX_NAMED]}")
    if empty:
        raise ValueError(f"Empty class folder(s) (no {'/'.join(IMAGE_EXTENSIONS)} files): {empty[:_MAX_NAMED]}")
    return FolderListing(np.asarray(paths, dtype=object).astype(str), np.asarray(labels, np.int64),
                         list(class_names))


def _decodes(path: tf.Tensor) -> tf.Tensor:
    """Decodes the file fully enough to detect corruption; returns its shape (so nothing is pruned)."""
    contents = tf.io.read_file(path)

    # A JPEG at 1/8 scale still entropy-decodes every block, so truncation and corrupt data fail
    # the same way as a full decode, at a fraction of the cost.
    def jpeg():
        return tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8))

    def other():
        return tf.shape(tf.io.decode_image(contents, channels=3, expand_animations=False))

    return tf.cond(tf.io.is_jpeg(contents), jpeg, other)


def find_unreadable(paths: np.ndarray, *, progress: bool | None = None) -> np.ndarray:
    """Indices of `paths` that cannot be read or decoded (sorted). Decodes every file once."""
    n = len(paths)
    if n == 0:
        return np.zeros([0], np.int64)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), paths.astype(str)))
    plain = tf.autograph.experimental.do_not_convert
    ds = ds.map(plain(lambda i, p: (i, _decodes(p))), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors().map(plain(lambda i, _: i)).batch(256)
    batches = ds.as_numpy_iterator()
    if progress if progress is not None else n >= _PROGRESS_MIN_FILES:
        import tqdm  # Only needed for large folders.
        batches = tqdm.tqdm(batches, total=-(-n // 256), desc="Checking images", unit="batch")
    ok = np.zeros(n, bool)
    for idx in batches:
        ok[idx] = True
    return np.flatnonzero(~ok)


def load_image_folder(root: str, *, class_names: list[str] | None = None,
                      skip_corrupt: bool = False) -> FolderListing:
    """`list_image_folder` plus the corrupt-file check.

    Raises ValueError naming the unreadable files, or with `skip_corrupt` drops them and logs how
    many. A class left without readable images is an error either way.
    """
    listing = list_image_folder(root, class_names)
    bad = find_unreadable(listing.paths)
    if len(bad) == 0:
        return listing
    named = [str(p) for p in listing.paths[bad[:_MAX_NAMED]]]
    if not skip_corrupt:
        raise UserError(f"{len(bad)} unreadable or corrupt image(s) in {root!r} (pass "
                        f"--config.data.skip_corrupt=true to leave them out): {named}")
    logging.warning("Skipping %d unreadable or corrupt image(s) in %r: %s", len(bad), root, named)
    keep = np.setdiff1d(np.arange(len(listing.paths)), bad)
    kept = FolderListing(listing.paths[keep], listing.labels[keep], listing.class_names)
    had = set(np.unique(listing.labels).tolist())
    left = set(np.unique(kept.labels).tolist())
    emptied = [kept.class_names[i] for i in sorted(had - left)]
    if emptied:
        raise ValueError(f"Class folder(s) in {root!r} have no readable image left after skipping corrupt "
                         f"files: {emptied}")
    return kept
