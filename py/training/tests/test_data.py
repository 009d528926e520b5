"""The embedded MNIST-5k data, its split, and the resumable epoch sampler."""
import pytest
import torch

from py.training import checkpoint, data


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


def test_atomic_checkpoint_and_fallback(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    checkpoint.save(tmp_path, 1, state, None, {"step": 1}, keep=2)
    checkpoint.save(tmp_path, 2, {"w": state["w"] + 1}, state, {"step": 2}, keep=2)
    checkpoint.save(tmp_path, 3, {"w": state["w"] + 2}, None, {"step": 3}, keep=2)
    assert [d.name for d in checkpoint.complete_checkpoints(tmp_path)] == ["step_000000002", "step_000000003"]
    # Corrupt the newest: resume falls back to the previous one.
    (tmp_path / "step_000000003" / "model.safetensors").write_bytes(b"garbage")
    path, (model, ema, train_state) = checkpoint.find_resumable(tmp_path)
    assert path.name == "step_000000002" and train_state["step"] == 2
    assert torch.equal(model["w"], state["w"] + 1) and torch.equal(ema["w"], state["w"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir() if p.is_dir())


def test_imagefolder_errors_explain_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        data.imagefolder_datasets(tmp_path, None, None)
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="class_name"):
        data.imagefolder_datasets(tmp_path, None, None)


def test_imagefolder_skips_corrupt_images(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 200, 30)).save(d / "ok.png")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not an image")
    train, val = data.imagefolder_datasets(tmp_path, None, None)
    images = [train[i][0] for i in range(len(train))]
    assert len(images) == 3 and train.skipped == 1
