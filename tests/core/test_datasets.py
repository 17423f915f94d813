"""Dataset loaders: seeded stratified splits, train-size, label noise, and on-disk formats.

CIFAR and FER2013 files are written tiny, in the exact layouts the loaders read, under tmp_path.
Nothing is downloaded.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn import datasets as skdatasets

from raytune_periodic.data import (
    DATASETS,
    add_label_noise,
    dataset_options,
    labels_of,
    load_dataset,
    split_indices,
)
from raytune_periodic.data.synthetic import (
    fer_rows,
    write_cifar10,
    write_cifar100,
    write_fer2013_csv,
)
from raytune_periodic.errors import ConfigError


def _x(dataset):
    return dataset.tensors[0]


# ---------------------------------------------------------------- bundled: digits, iris


@pytest.mark.parametrize("name", ["digits", "iris"])
def test_same_seed_same_splits_different_seed_different(name):
    a, b, c = (load_dataset(name, seed=s) for s in (3, 3, 4))
    for part in ("train", "val", "test"):
        assert torch.equal(_x(getattr(a, part)), _x(getattr(b, part)))
        assert torch.equal(labels_of(getattr(a, part)), labels_of(getattr(b, part)))
    assert not torch.equal(_x(a.train), _x(c.train))
    assert a.info["seed"] == 3 and a.info["noisy_labels"] == 0


def test_split_indices_disjoint_stratified_and_match_loader():
    labels = skdatasets.load_digits().target
    idx = split_indices(
        labels, np.random.default_rng(7), test_fraction=0.3, val_fraction=0.2, train_size=100
    )
    parts = [idx[k] for k in ("train", "val", "test", "spare")]
    together = np.concatenate(parts)
    assert len(together) == len(labels) == len(np.unique(together))  # disjoint and complete
    assert len(idx["test"]) == round(0.3 * 1797)
    assert len(idx["val"]) == round(0.2 * (1797 - len(idx["test"])))
    for part in ("train", "val", "test"):
        counts = np.bincount(labels[idx[part]], minlength=10)
        expected = np.bincount(labels) * len(idx[part]) / len(labels)
        assert np.abs(counts - expected).max() <= 1.5
    data = load_dataset("digits", seed=7, train_size=100)
    for part in ("train", "val", "test"):
        assert labels_of(getattr(data, part)).tolist() == labels[idx[part]].tolist()


def test_shapes_dtypes_and_sizes():
    digits = load_dataset("digits")
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10 and digits.is_image
    assert _x(digits.train).dtype == torch.float32
    assert labels_of(digits.train).dtype == torch.int64
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797 and sizes == [
        digits.info[f"{k}_size"] for k in ("train", "val", "test")
    ]
    iris = load_dataset("iris", test_fraction=0.2, val_fraction=0.25)
    assert iris.input_shape == (4,) and iris.num_classes == 3 and not iris.is_image
    assert [len(iris.train), len(iris.val), len(iris.test)] == [90, 30, 30]


@pytest.mark.parametrize("name", ["digits", "iris"])
def test_train_size_is_respected_and_stratified(name):
    data = load_dataset(name, train_size=30, seed=2)
    full = load_dataset(name, seed=2)
    assert len(data.train) == 30
    counts = np.bincount(labels_of(data.train).numpy(), minlength=data.num_classes)
    assert counts.min() >= 1 and counts.max() - counts.min() <= 2
    # the test and val splits do not depend on train_size
    assert torch.equal(labels_of(data.test), labels_of(full.test))
    assert torch.equal(labels_of(data.val), labels_of(full.val))


def test_label_noise_changes_exactly_round_rate_n_training_labels():
    clean = load_dataset("digits", seed=5, train_size=333)
    noisy = load_dataset("digits", seed=5, train_size=333, label_noise=0.3)
    y0, y1 = labels_of(clean.train), labels_of(noisy.train)
    changed = int((y0 != y1).sum())
    assert changed == round(0.3 * 333) == noisy.info["noisy_labels"]
    assert torch.equal(_x(clean.train), _x(noisy.train))
    assert int(y1.min()) >= 0 and int(y1.max()) < 10
    for part in ("val", "test"):
        assert torch.equal(labels_of(getattr(clean, part)), labels_of(getattr(noisy, part)))
    again = load_dataset("digits", seed=5, train_size=333, label_noise=0.3)
    assert torch.equal(labels_of(again.train), y1)


def test_add_label_noise_always_picks_a_different_class():
    labels = torch.arange(1000) % 4
    noisy, positions = add_label_noise(labels, 1.0, 4, np.random.default_rng(0))
    assert len(positions) == 1000 and bool((noisy != labels).all())
    assert set(noisy.tolist()) == {0, 1, 2, 3}
    same, none = add_label_noise(labels, 0.0, 4, np.random.default_rng(0))
    assert torch.equal(same, labels) and len(none) == 0


def test_standardisation_uses_train_stats_only():
    data = load_dataset("digits", seed=1, train_size=200)
    x_train = _x(data.train)
    assert abs(float(x_train.mean())) < 1e-5 and abs(float(x_train.std(correction=0)) - 1) < 1e-4
    bunch = skdatasets.load_digits()
    idx = split_indices(
        bunch.target, np.random.default_rng(1), test_fraction=0.3, val_fraction=0.2, train_size=200
    )
    raw = bunch.data / 16.0
    mean, std = raw[idx["train"]].mean(), raw[idx["train"]].std()
    expected_val = (raw[idx["val"]] - mean) / std
    assert np.allclose(_x(data.val).reshape(len(data.val), -1).numpy(), expected_val, atol=1e-5)
    assert data.info["mean"] == pytest.approx([mean]) and data.info["std"] == pytest.approx([std])
    iris = load_dataset("iris")
    assert torch.allclose(_x(iris.train).mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(_x(iris.train).std(0, correction=0), torch.ones(4), atol=1e-4)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"train_size": 5}, "train_size"),
        ({"train_size": 5000}, "train_size"),
        ({"label_noise": 1.5}, "label_noise"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"seed": "x"}, "seed"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ConfigError) as err:
        load_dataset("digits", **options)
    assert err.value.field == f"dataset.options.{field}"
    assert "\n" not in str(err.value)


def test_unknown_dataset_and_option_list_valid_names():
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist")
    assert err.value.field == "dataset.name"
    for name in DATASETS.names():
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="valid: .*label_noise"):
        load_dataset("iris", noise=0.1)


def test_dataset_options():
    assert set(DATASETS.names()) == {
        *("cifar10", "cifar100", "digits", "fer2013", "iris", "affectnet", "tiny_imagenet")
    }
    for name in DATASETS.names():
        opts = dataset_options(name)
        assert {"seed", "val_fraction", "train_size", "label_noise"} <= set(opts)
        assert opts["seed"] == 0 and opts["train_size"] is None and opts["label_noise"] == 0.0


# ---------------------------------------------------------------- CIFAR-10/100 on disk


def test_cifar10_reads_torchvision_layout(tmp_path):
    write_cifar10(tmp_path)
    data = load_dataset("cifar10", root=str(tmp_path), verify=False, val_fraction=0.2, seed=3)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 20)
    assert _x(data.train).dtype == torch.float32 and labels_of(data.test).dtype == torch.int64
    assert sorted(labels_of(data.test).tolist()) == sorted([j % 10 for j in range(20)])
    assert np.bincount(labels_of(data.val).numpy(), minlength=10).tolist() == [2] * 10
    x = _x(data.train)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    assert len(data.info["mean"]) == 3 and data.info["md5_verified"] is False
    small = load_dataset(
        "cifar10", root=tmp_path, verify=False, train_size=30, label_noise=0.5, seed=3
    )
    assert len(small.train) == 30 and small.info["noisy_labels"] == 15


def test_cifar_pixel_layout_is_chw(tmp_path):
    folder = write_cifar10(tmp_path)
    with open(folder / "test_batch", "rb") as handle:
        raw = pickle.load(handle)["data"][0].reshape(3, 32, 32).astype(np.float32)
    data = load_dataset("cifar10", root=tmp_path, verify=False)
    mean, std = np.array(data.info["mean"]), np.array(data.info["std"])
    restored = _x(data.test)[0].numpy() * std[:, None, None] + mean[:, None, None]
    assert np.allclose(restored, raw, atol=1e-3)


def test_cifar100_reads_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    data = load_dataset("cifar100", root=tmp_path, verify=False, val_fraction=1 / 3)
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (200, 100, 100)
    assert set(labels_of(data.train).tolist()) == set(range(100))


def test_cifar_md5_check_is_on_by_default(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ConfigError, match="md5") as err:
        load_dataset("cifar10", root=tmp_path)
    assert err.value.field == "dataset.options.root"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_root_is_config_error(tmp_path, name):
    with pytest.raises(ConfigError, match="required") as err:
        load_dataset(name)
    assert err.value.field == "dataset.options.root"
    for root in (tmp_path / "nope", tmp_path):  # missing root; root without the folder
        with pytest.raises(ConfigError, match="does not exist") as err:
            load_dataset(name, root=root, verify=False)
        assert err.value.field == "dataset.options.root" and "\n" not in str(err.value)


def test_cifar_missing_batch_file_is_config_error(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="data_batch_3") as err:
        load_dataset("cifar10", root=tmp_path, verify=False)
    assert err.value.field == "dataset.options.root"


# ---------------------------------------------------------------- FER2013 CSV


@pytest.mark.parametrize("layout", ["file", "dir", "subdir", "icml"])
def test_fer2013_kaggle_layouts(tmp_path, layout):
    if layout == "icml":
        write_fer2013_csv(
            tmp_path / "fer2013" / "icml_face_data.csv", header="emotion, Usage, pixels"
        )
        root = tmp_path
    else:
        target = tmp_path / ("fer2013" if layout == "subdir" else "") / "fer2013.csv"
        csv_path = write_fer2013_csv(target)
        root = csv_path if layout == "file" else tmp_path
    data = load_dataset("fer2013", root=str(root))
    assert data.input_shape == (1, 48, 48) and data.num_classes == 7
    assert (len(data.train), len(data.val), len(data.test)) == (21, 5, 4)
    assert labels_of(data.test).tolist() == [5, 6, 0, 1]  # rows 26..29 in file order
    x = _x(data.train)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(correction=0)) - 1) < 1e-4
    assert data.info["val_source"] == "PublicTest" and data.info["test_source"] == "PrivateTest"


def test_fer2013_options(tmp_path):
    write_fer2013_csv(tmp_path / "fer2013.csv")
    small = load_dataset("fer2013", root=tmp_path, train_size=14, label_noise=0.5, seed=1)
    assert len(small.train) == 14 and small.info["noisy_labels"] == 7
    assert (
        np.bincount(labels_of(load_dataset("fer2013", root=tmp_path, train_size=14).train)).tolist()
        == [2] * 7
    )
    carved = load_dataset("fer2013", root=tmp_path, val_fraction=1 / 3)
    assert (len(carved.train), len(carved.val), len(carved.test)) == (14, 7, 4)


def test_fer2013_size_resizes_the_faces(tmp_path):
    """The surrogate paper's 28×28 faces for LeNet/ResNet20 (§3.2)."""
    write_fer2013_csv(tmp_path / "fer2013.csv")
    full = load_dataset("fer2013", root=tmp_path)
    small = load_dataset("fer2013", root=tmp_path, size=28)
    assert small.input_shape == (1, 28, 28) and small.info["size"] == 28
    assert labels_of(small.test).tolist() == labels_of(full.test).tolist()
    x = _x(small.train)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(correction=0)) - 1) < 1e-4
    with pytest.raises(ConfigError) as err:
        load_dataset("fer2013", root=tmp_path, size=4)
    assert err.value.field == "dataset.options.size"


def test_fer2013_torchvision_train_csv_layout(tmp_path):
    folder = tmp_path / "fer2013"
    folder.mkdir()
    rows = fer_rows(40, np.random.default_rng(3))
    (folder / "train.csv").write_text(
        "emotion,pixels\n" + "".join(f"{label},{pixels}\n" for label, pixels in rows)
    )
    (folder / "test.csv").write_text("pixels\n" + rows[0][1] + "\n")
    data = load_dataset("fer2013", root=tmp_path, val_fraction=0.25, test_fraction=0.3)
    assert (len(data.train), len(data.val), len(data.test)) == (21, 7, 12)
    assert "no labels" in data.info["test_source"]


def test_fer2013_missing_or_bad_root(tmp_path):
    for root in (None, tmp_path / "missing.csv", tmp_path):
        with pytest.raises(ConfigError) as err:
            load_dataset("fer2013", root=root)
        assert err.value.field == "dataset.options.root" and "\n" not in str(err.value)
    bad = tmp_path / "fer2013.csv"
    bad.write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    with pytest.raises(ConfigError, match="2304 pixels") as err:
        load_dataset("fer2013", root=bad)
    assert err.value.field == "dataset.options.root"


def test_iris_paper_split_is_sklearns_80_20_with_random_state_42() -> None:
    """The survey's ``train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)``,
    validated on its test split, whatever the experiment seed."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    x, y = load_iris(return_X_y=True)
    x_train, x_test, _, y_test = train_test_split(x, y, test_size=0.2, random_state=42, stratify=y)
    for seed in (0, 3):
        data = load_dataset("iris", seed=seed, test_fraction=0.2, split_seed=42, val_is_test=True)
        assert [len(data.train), len(data.val), len(data.test)] == [120, 30, 30]
        mean, std = torch.tensor(data.info["mean"]), torch.tensor(data.info["std"])
        assert torch.allclose(_x(data.test) * std + mean, torch.tensor(x_test).float(), atol=1e-5)
        assert data.test.tensors[1].tolist() == y_test.tolist()
        assert torch.equal(_x(data.val), _x(data.test))
        assert torch.allclose(mean, torch.tensor(x_train.mean(0)).float(), atol=1e-5)
    with pytest.raises(ConfigError) as err:
        load_dataset("iris", split_seed=-1)
    assert err.value.field == "dataset.options.split_seed"


def test_bundled_sets_read_without_sklearn_equal_sklearns_loaders() -> None:
    """digits/iris come from scikit-learn's data files read with numpy (a trial worker then
    does not import scikit-learn, ~1 s of its start-up): the same arrays as its loaders."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits, load_iris

    from raytune_periodic.data.sklearn_sets import _bundled

    for name, loader in (("digits", load_digits), ("iris", load_iris)):
        data, target = _bundled(name)
        bunch = loader()
        assert data.dtype == bunch.data.dtype and np.array_equal(data, bunch.data), name
        assert target.dtype == bunch.target.dtype and np.array_equal(target, bunch.target)
    code = (
        "import sys\n"
        "from raytune_periodic.data import load_dataset\n"
        "d = load_dataset('digits', seed=0)\n"
        "i = load_dataset('iris', seed=0)\n"
        "print(len(d.train) > 0 and len(i.train) > 0, 'sklearn' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stdout
