"""The embedded MNIST-5k data, its split, and the resumable epoch sampler."""
import pytest
import torch

from py.training import checkpoint, data
from py.training.tests.support import make_folder


def test_mnist5k_is_real_and_balanced():
    images, labels = data.load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [500] * 10
    assert 0.05 < images.float().div(255).mean().item() < 0.3  # digits: mostly dark background


def test_split_is_stratified_disjoint_and_seeded():
    _, labels = data.load_mnist5k()
    train, val = data.stratified_split(labels, 0.2, seed=3)
    assert len(set(train.tolist()) & set(val.tolist())) == 0 and len(train) + len(val) == 5000
    assert torch.bincount(labels[val]).tolist() == [100] * 10
    again, _ = data.stratified_split(labels, 0.2, seed=3)
    assert torch.equal(train, again)
    other, _ = data.stratified_split(labels, 0.2, seed=4)
    assert not torch.equal(train, other)


def test_augmentation_depends_only_on_seed_epoch_index():
    train, val = data.mnist5k_datasets(limit=64)
    train.set_epoch(2)
    a = train[5][0]
    torch.manual_seed(123)  # the global RNG must not matter
    b = train[5][0]
    assert torch.equal(a, b)
    epoch2 = [train[i][0] for i in range(16)]
    train.set_epoch(3)
    epoch3 = [train[i][0] for i in range(16)]
    assert any(not torch.equal(p, q) for p, q in zip(epoch2, epoch3))  # new shifts each epoch
    assert torch.equal(val[1][0], val[1][0])  # evaluation is not augmented
    x, y = val[0]
    assert x.shape == (1, 28, 28) and 0 <= y < 10


def test_epoch_sampler_shards_cover_the_global_batch():
    full = data.EpochSampler(10, shuffle=True, seed=1)
    full.set_epoch(4)
    order = list(full)
    shards = [data.EpochSampler(10, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(4)
    a, b = list(shards[0]), list(shards[1])
    # step k of 2 ranks with batch 2 each == step k of 1 rank with batch 4
    assert sorted(a[:2] + b[:2]) == sorted(order[:4])
    resumed = data.EpochSampler(10, shuffle=True, seed=1)
    resumed.set_epoch(4, start_sample=6)
    assert list(resumed) == order[6:]
    val = [data.EpochSampler(7, shuffle=False, rank=r, world_size=3) for r in range(3)]
    assert sorted(sum((list(v) for v in val), [])) == list(range(7))


def _train_state(step):
    return {"epoch": 0, "step_in_epoch": step, "global_step": step, "running": None, "optimizer": {},
            "scaler": {}, "rng": checkpoint.pack_rng()}


def test_atomic_checkpoint_and_fallback(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    checkpoint.save(tmp_path, 1, state, None, _train_state(1), {"seed": 1}, keep=2)
    checkpoint.save(tmp_path, 2, {"w": state["w"] + 1}, state, _train_state(2), {"seed": 1}, keep=2)
    checkpoint.save(tmp_path, 3, {"w": state["w"] + 2}, None, _train_state(3), {"seed": 1}, keep=2)
    assert [d.name for d in checkpoint.checkpoint_dirs(tmp_path)] == ["step_000000003", "step_000000002"]
    # Corrupt the newest: resume falls back to the previous one.
    (tmp_path / "step_000000003" / "model.safetensors").write_bytes(b"garbage")
    loaded, problems = checkpoint.find_good(tmp_path)
    assert [d.name for d, _ in problems] == ["step_000000003"]
    assert loaded.path.name == "step_000000002" and loaded.train_state["global_step"] == 2
    assert loaded.config == {"seed": 1}
    assert torch.equal(loaded.model_state["w"], state["w"] + 1) and torch.equal(loaded.ema_state["w"], state["w"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir() if p.is_dir())


def test_limit_train_leaves_validation_whole_and_large_seeds_work():
    train, val = data.mnist5k_datasets(limit=64)
    assert len(train) == 64 and len(val) == 1000  # the split py/eval evaluates
    big = data.mnist5k_datasets(limit=8, seed=2**31 - 1)[0]
    big.set_epoch(3)
    assert big[0][0].shape == (1, 28, 28)
    sampler = data.EpochSampler(10, seed=2**31 - 1)
    sampler.set_epoch(10**6)
    assert sorted(sampler) == list(range(10))


def test_imagefolder_errors_explain_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        data.imagefolder_datasets(tmp_path, None, None)
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="class_name"):
        data.imagefolder_datasets(tmp_path, None, None)


def test_imagefolder_skips_corrupt_images_without_substituting(tmp_path):
    import torchvision.transforms.functional as TF
    make_folder(tmp_path, {"train": 1, "val": 3}, broken=[("train", "a", "broken.png"), ("val", "a", "bad1.png"),
                                                          ("val", "b", "bad2.png")])
    train, val = data.imagefolder_datasets(tmp_path, TF.to_tensor, TF.to_tensor)
    items = [train[i] for i in range(len(train))]
    assert len(items) == 3 and sum(item is None for item in items) == 1 and train.skipped == 1
    loader = torch.utils.data.DataLoader(val, batch_size=3, collate_fn=data.skip_collate)
    batches = list(loader)
    assert sum(b[2] for b in batches) == 2  # the two unreadable files, counted
    images = torch.cat([b[0] for b in batches])
    assert len(images) == 6  # each readable image once, none stands in for a broken one
    assert len({tuple(x[:, 0, 0].tolist()) for x in images}) == 6
    all_bad = data.skip_collate([None, None])
    assert all_bad[0].shape[0] == 0 and all_bad[2] == 2


def test_imagefolder_without_readable_images_or_with_other_classes_is_a_data_error(tmp_path):
    make_folder(tmp_path / "x", {"train": 1, "val": 0}, broken=[("val", "a", "b.png"), ("val", "a", "c.png")],
                classes=("a",))
    train, val = data.imagefolder_datasets(tmp_path / "x", None, None)
    train.check_readable("train")
    with pytest.raises(data.DataError, match="the val split .* has no readable image: all 2 files"):
        val.check_readable("val")
    make_folder(tmp_path / "y", {"train": 1}, classes=("a", "b"))
    make_folder(tmp_path / "y", {"val": 1}, classes=("a", "c"))
    with pytest.raises(data.DataError, match=r"only in train/: \['b'\], only in val/: \['c'\]"):
        data.imagefolder_datasets(tmp_path / "y", None, None)
