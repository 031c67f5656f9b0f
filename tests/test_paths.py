"""Every path a user passes works relative to the current directory and with ``~``.

(workdir, pretrained, data_dir, image folders, manual_dir; the CLI and the API alike.)
"""

import os
import shutil

import pytest

import bit_medical
from bit_medical import experiment, paths, train
from bit_medical.models import export

from run_helpers import assert_same_params, cli, params, train_args


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh HOME and working directory: ``tmp/home`` and ``tmp/cwd``."""
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "home"


def test_absolute_expands_home_and_the_working_directory(home):
    cwd = os.getcwd()
    assert paths.absolute("runs/x") == os.path.join(cwd, "runs", "x")
    assert paths.absolute("../runs/x") == os.path.join(os.path.dirname(cwd), "runs", "x")
    assert paths.absolute("~/runs/x") == str(home / "runs" / "x")
    assert paths.absolute("/data/x") == "/data/x"
    # Unset fields and object-store URLs are left alone.
    assert paths.absolute("") == "" and paths.absolute(None) is None
    assert paths.absolute("gs://bucket/runs/x") == "gs://bucket/runs/x"


def test_every_path_of_a_config_is_made_absolute(home):
    config = experiment.base()
    config.pretrained = "~/runs/pretrain"
    config.data.update(data_dir="tfds", train_dir="~/images/train", val_dir="images/val")
    train.absolute_paths(config)
    cwd = os.getcwd()
    assert config.pretrained == str(home / "runs" / "pretrain")
    assert config.data.data_dir == os.path.join(cwd, "tfds")
    assert config.data.train_dir == str(home / "images" / "train")
    assert config.data.val_dir == os.path.join(cwd, "images", "val")

    released = experiment.base()
    released.pretrained = "BiT-M-R50x1"  # a name, not a path
    train.absolute_paths(released)
    assert released.pretrained == "BiT-M-R50x1"
    assert released.data.data_dir is None and released.data.train_dir == ""


def _place(reference_run, home):
    """The reference run's export at ~/runs/ref, reached from the working directory as ../home/."""
    target = home / "runs" / "ref"
    shutil.copytree(os.path.join(reference_run, "export"), target / "export")
    return target


@pytest.mark.parametrize("form", ["relative", "home"])
def test_load_model_and_export_load_take_relative_and_home_paths(form, reference_run, home,
                                                                small_npz):
    target = _place(reference_run, home)
    given = "../home/runs/ref" if form == "relative" else "~/runs/ref"
    model, variables = bit_medical.load_model(given)
    assert model.num_classes == 2
    assert_same_params(variables["params"], params(str(target)), rtol=0, atol=0)
    loaded, meta = export.load(given)
    assert meta["num_classes"] == 2
    assert_same_params(loaded, variables["params"], rtol=0, atol=0)
    # A pretrained file too, as load_model's source.
    shutil.copy(small_npz, home / "small.npz")
    model, _ = bit_medical.load_model("../home/small.npz" if form == "relative" else "~/small.npz",
                                      num_classes=3)
    assert model.num_classes == 3


def test_the_plain_orbax_recipe_of_the_export_docstring_runs_with_a_relative_dir(reference_run,
                                                                                  home):
    _place(reference_run, home)
    recipe = export.__doc__.split("(Orbax takes only absolute paths)::", 1)[1]
    code = "\n".join(line[4:] for line in recipe.strip("\n").splitlines())
    namespace = {"DIR": "../home/runs/ref"}
    exec(code, namespace)  # noqa: S102  the documented recipe, as written
    assert namespace["meta"]["num_classes"] == 2
    assert_same_params(namespace["params"], params(reference_run), rtol=0, atol=0)


def test_cli_train_takes_relative_and_home_paths(data_dir, small_npz, reference_run, tmp_path,
                                                 monkeypatch):
    """A relative workdir and pretrained file and ``data_dir=~/tfds``, from another working
    directory: the same run as the reference; eval/export then take the relative workdir."""
    home, cwd = os.path.dirname(data_dir), tmp_path / "cwd"
    cwd.mkdir()
    shutil.copy(small_npz, cwd / "small.npz")
    args = train_args("~/" + os.path.basename(data_dir), "small.npz", "runs/rel")
    cli(args, cwd=str(cwd), env={"HOME": home})

    workdir = cwd / "runs" / "rel"
    assert_same_params(params(str(workdir)), params(reference_run), rtol=0, atol=0)
    saved = train.load_config(str(workdir))  # absolute: the run means the same from anywhere
    assert saved.pretrained == str(cwd / "small.npz")
    assert saved.data.data_dir == data_dir
    assert not os.path.exists(cwd / "~")

    monkeypatch.chdir(cwd)
    assert train.export_workdir("runs/rel") == str(workdir / "export")


def test_cli_prepare_takes_home_paths(tmp_path):
    from input_pipeline.datasets import synthetic

    home = tmp_path / "home"
    synthetic.write_tuberculosis(home / "tb", n_shenzhen=4, n_montgomery=2, image_size=(40, 36),
                                 seed=1)
    out = cli(["prepare", "tuberculosis_cxr", "--manual_dir=~/tb", "--data_dir=~/tfds",
               "--builder_config=full", "--num_workers=1"], cwd=str(tmp_path),
              env={"HOME": str(home)}).stdout
    assert f"in {home / 'tfds'}" in out
    assert os.path.isdir(home / "tfds" / "tuberculosis_cxr")
    assert not os.path.exists(tmp_path / "~")
