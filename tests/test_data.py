import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import rlab.vision.data as data
from rlab.vision.data import ImageData, course_subset, load_dataset, stratified_split
from rlab.errors import UserError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache folder."""
    root = tmp_path / "cache"
    monkeypatch.setenv("RLAB_CACHE", str(root))
    return root


# ----------------------------------------------------------------------------- tiny CIFAR archive


def make_cifar_archive(folder, per_batch=4, seed=0):
    """A tar.gz in the real CIFAR-10 python format; returns (path, train images, test images)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    batches = {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, obj):
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        add("batches.meta", {b"label_names": [f"class{c}".encode() for c in range(10)], b"num_vis": 3072})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 10, per_batch)]
            batches[name] = (x, y)
            add(name, {b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": [b"f.png"] * per_batch})
    path = folder / "cifar-10-python.tar.gz"
    path.write_bytes(buf.getvalue())
    return path, batches


def test_cifar_archive_in_real_format_loads(tmp_path, monkeypatch):
    path, batches = make_cifar_archive(tmp_path)
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    test = load_dataset("cifar10", "test", data_dir=str(tmp_path))
    train = load_dataset("cifar10", "train", data_dir=str(tmp_path))
    assert test.images.shape == (4, 3, 32, 32) and train.images.shape == (20, 3, 32, 32)
    assert test.classes == [f"class{c}" for c in range(10)]
    x, y = batches["test_batch"]
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, row-major.
    assert test.images[2, 1, 3, 5].item() == x[2, 1024 + 3 * 32 + 5]
    assert test.labels.tolist() == y
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    again = load_dataset("cifar10", "test", data_dir=str(tmp_path))  # now from the decoded cache
    assert torch.equal(again.images, test.images)


def test_cifar_checksum_mismatch_is_a_clear_error(tmp_path):
    make_cifar_archive(tmp_path)
    with pytest.raises(UserError, match="checksum mismatch.*md5"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


def test_cifar_download_is_checked_and_offline_is_clear(tmp_path, monkeypatch, cache):
    src, _ = make_cifar_archive(tmp_path)

    def fake_download(url, path):
        assert url == data.CIFAR10_URL
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(src.read_bytes())

    monkeypatch.setattr(data, "_download", fake_download)
    with pytest.raises(UserError, match="checksum mismatch"):
        load_dataset("cifar10", "test")
    assert not (cache / "cifar-10-python.tar.gz").exists()  # a bad download is not kept

    def offline(url, path):
        raise UserError(f"could not download {url}; pass --data-dir")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(UserError, match="--data-dir"):
        load_dataset("cifar10", "test")


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0],
                                                      "evil": print}))
    with pytest.raises(UserError, match="builtins.print"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- image folders


def make_folder(root, classes=("cat", "dog"), per_class=3, size=(8, 6), mode="RGB", suffix=".png"):
    rng = np.random.default_rng(1)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / cls / f"{i}{suffix}")
    return root


def test_image_folder_loads_with_pixels_and_labels(tmp_path):
    root = make_folder(tmp_path / "imgs")
    d = load_dataset(f"imagefolder:{root}")
    assert d.images.shape == (6, 3, 6, 8) and d.images.dtype == torch.uint8
    assert d.classes == ["cat", "dog"] and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    expected = np.array(Image.open(root / "dog" / "1.png"))
    assert torch.equal(d.images[4], torch.from_numpy(expected).permute(2, 0, 1))
    f = d.float()
    assert f.dtype == torch.float32 and f.max() <= 1 and torch.allclose(f[0] * 255, d.images[0].float())


def test_image_folder_with_split_and_greyscale(tmp_path):
    make_folder(tmp_path / "ds" / "train", per_class=4, mode="L")
    make_folder(tmp_path / "ds" / "test", per_class=2, mode="L")
    train = load_dataset(f"imagefolder:{tmp_path / 'ds'}", "train")
    test = load_dataset(f"imagefolder:{tmp_path / 'ds'}", "test")
    assert train.images.shape == (8, 1, 6, 8) and test.images.shape == (4, 1, 6, 8)


def test_image_folder_cache_sees_changed_files(tmp_path, cache):
    root = make_folder(tmp_path / "imgs", per_class=1)
    first = load_dataset(f"imagefolder:{root}")
    assert list((cache / "imagefolder").glob("*.npz"))
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "cat" / "0.png")
    second = load_dataset(f"imagefolder:{root}")
    assert second.images[0].sum() == 0 and not torch.equal(first.images, second.images)


@pytest.mark.parametrize("problem, message", [
    ("missing", "does not exist"),
    ("no_classes", "no class folders"),
    ("empty_class", "is empty"),
    ("unreadable", "cannot read image"),
    ("mixed", "mixed sizes"),
    ("no_split", "no test/ folder"),
])
def test_bad_image_folders_give_clear_errors(tmp_path, problem, message):
    root = tmp_path / "imgs"
    if problem == "no_classes":
        root.mkdir()
    elif problem == "empty_class":
        make_folder(root)
        (root / "zebra").mkdir()
    elif problem == "unreadable":
        make_folder(root)
        (root / "cat" / "broken.jpg").write_bytes(b"not an image")
    elif problem == "mixed":
        make_folder(root)
        Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "dog" / "small.png")
    elif problem == "no_split":
        make_folder(root / "train")
    with pytest.raises(UserError, match=message):
        load_dataset(f"imagefolder:{root}", "test")


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(UserError, match="Did you mean 'mnist5k'"):
        load_dataset("mnist5")
    with pytest.raises(UserError, match="allowed: train, test"):
        load_dataset("mnist5k", "valid")


def test_cifar10_jpg_missing_tarball_is_clear(tmp_path):
    with pytest.raises(UserError, match="cifar10-jpg.tar.gz not found"):
        load_dataset("cifar10-jpg", data_dir=str(tmp_path))


def test_cifar10_jpg_unpacks_once_from_a_checked_tarball(tmp_path, monkeypatch, cache):
    tree = tmp_path / "src" / "cifar10-jpg"
    make_folder(tree / "train", per_class=2, suffix=".jpg")
    make_folder(tree / "test", per_class=1, suffix=".jpg")
    tarball = tmp_path / "cifar10-jpg.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpg")
    with pytest.raises(UserError, match="checksum mismatch.*sha256"):
        load_dataset("cifar10-jpg", data_dir=str(tmp_path))
    monkeypatch.setattr(data, "CIFAR10_JPG_SHA256", hashlib.sha256(tarball.read_bytes()).hexdigest())
    test = load_dataset("cifar10-jpg", "test", data_dir=str(tmp_path))
    assert test.name == "cifar10-jpg" and test.images.shape == (2, 3, 6, 8)
    assert (cache / "cifar10-jpg" / "cifar10-jpg" / "train" / "cat").is_dir()
    tarball.write_bytes(b"")  # the second load needs only the cache
    monkeypatch.setattr(data, "verify_checksum", lambda *a, **k: pytest.fail("re-verified an unpacked archive"))
    assert len(load_dataset("cifar10-jpg", "train", data_dir=str(tmp_path))) == 4


# ----------------------------------------------------------------------------- mnist5k and subsets


def test_stratified_split_is_fixed_disjoint_and_balanced():
    labels = np.repeat(np.arange(10), 50)
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(test) == 100 and len(train) == 400 and not set(train) & set(test)
    assert np.bincount(labels[test]).tolist() == [10] * 10
    again, _ = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(train, again)


def test_mnist5k_split_is_4000_1000_stratified():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert test.images.float().mean() > 10  # real digits, not blank
    train_rows = {bytes(r) for r in train.images.flatten(1).numpy()}
    assert sum(bytes(r) in train_rows for r in test.images.flatten(1).numpy()) < 5  # MNIST has a few duplicates at most


def test_course_subset_takes_per_class_fixed_images():
    d = ImageData(torch.arange(60, dtype=torch.uint8).view(60, 1, 1, 1).expand(60, 1, 2, 2).clone(),
                  torch.arange(60) % 3, ["a", "b", "c"], "toy")
    sub = course_subset(d, per_class=5, seed=0)
    assert torch.bincount(sub.labels).tolist() == [5, 5, 5]
    assert torch.equal(course_subset(d, per_class=5, seed=0).images, sub.images)
    assert not torch.equal(course_subset(d, per_class=5, seed=1).images, sub.images)
    assert (sub.images[:, 0, 0, 0].long() % 3 == sub.labels).all()  # images keep their labels
    with pytest.raises(UserError, match="fewer than the 21"):
        course_subset(d, per_class=21)


def test_image_data_validates_types():
    with pytest.raises(TypeError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), ["a"], "x")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"], "x")
