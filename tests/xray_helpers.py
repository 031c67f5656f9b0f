"""Shared by the X-ray builder tests: prepare a fixture copy, read a split back."""

import tensorflow_datasets as tfds

from input_pipeline import datasets as xray_datasets


def prepare(name, fx_root, data_dir, config="224", **kwargs):
    """Runs the real builder ``name`` on the fake dataset at ``fx_root`` (one worker by default)."""
    kwargs.setdefault("num_workers", 1)
    return xray_datasets.prepare(name, manual_dir=fx_root, data_dir=data_dir, config=config, **kwargs)


def load(builder, split):
    """{image_path: example} of one split, as numpy."""
    return {ex["image_path"].decode(): ex
            for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))}
