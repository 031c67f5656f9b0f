"""bit_medical: BiT ResNet-v2 pre-training and few-shot transfer for natural and chest X-ray images, in JAX."""

import setuptools

_TORCH = ["torch>=2.1", "torchvision>=0.16"]

setuptools.setup(
    name="bit_medical",
    version="0.1.0",
    description=(
        "JAX/Flax reimplementation of Cherti & Jitsev (arXiv 2106.00116): BiT pre-training "
        "on natural and chest X-ray images and full / few-shot transfer."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["bit_medical", "bit_medical.*", "input_pipeline", "input_pipeline.*"]),
    package_data={"bit_medical": ["paper_results/*.csv.gz", "paper_results/README.md"]},
    install_requires=[
        "jax>=0.5,<0.12",
        "flax>=0.10,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "etils[epath]>=1.5",  # paths that may be gs:// URLs (results, report)
        # The CPU build keeps the base install small; tf.data only feeds the host.
        "tensorflow-cpu>=2.16,<2.22; platform_system == 'Linux'",
        "tensorflow>=2.16,<2.22; platform_system != 'Linux'",
        "tensorflow-datasets>=4.9.7,<5",
        # TFDS's builder code imports this backport without declaring it.
        "importlib_resources>=5",
        "ml-collections>=0.1.1,<2",
        "clu>=0.0.12,<0.1",
        "tensorboard>=2.16,<2.22",
        "numpy>=1.26,<3",
        "einops>=0.8,<0.9",
        "scikit-learn>=1.4,<2",
        "matplotlib>=3.8,<4",
        "pillow>=10",
        "tqdm>=4.60",
    ],
    extras_require={
        "torch": _TORCH,
        "test": _TORCH + [
            "timm>=1.0,<1.1",
            "pytest>=8",
            "pytest-xdist>=3.5",
            "pytest-timeout>=2.3",
            "chex>=0.1.87",
            "pandas>=2.1",
            "opencv-python-headless>=4.9",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
            "ruff>=0.6",
        ],
        "tpu": ["jax[tpu]>=0.5,<0.12"],
        "cuda": ["jax[cuda12]>=0.5,<0.12"],
    },
    entry_points={"console_scripts": ["bit-medical=bit_medical.main:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
