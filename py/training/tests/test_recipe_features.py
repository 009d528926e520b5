"""The recipe features of the papers' training scripts: layer-wise lr decay with per-family layer ids
and no-decay groups, repeated augmentation (DeiT's sampler, across ranks), colour jitter, and MESA
(EMA self-distillation) against a hand computation."""
import collections
import math

import pytest
import torch

import py.models as models
from py.training import config, data, engine, optim, train
from py.training.tests.support import TINY, assert_usage_error, main_in_process, make_folder, process_state_restored

# ------------------------------------------------------------------------------------------------
# Layer-wise lr decay

# Layer ids written out by hand from the rule (embeddings 0, layers in order, head last; a VMamba/PVMamba
# stage's downsample with the first block of the next stage), by parameter-name prefix.
VMAMBA_T = {"patch_embed.": 0, "layers.0.blocks.0.": 1, "layers.0.blocks.1.": 2, "layers.0.downsample.": 3,
            "layers.1.blocks.0.": 3, "layers.1.blocks.1.": 4, "layers.1.downsample.": 5,
            **{f"layers.2.blocks.{b}.": 5 + b for b in range(8)}, "layers.2.downsample.": 13,
            "layers.3.blocks.0.": 13, "layers.3.blocks.1.": 14, "classifier.": 15}
PVMAMBA_T = {"patch_embed.": 0, "layers.0.blocks.0.": 1, "layers.0.blocks.1.": 2, "layers.0.downsample.": 3,
             **{f"layers.1.blocks.{b}.": 3 + b for b in range(4)}, "layers.1.downsample.": 7,
             **{f"layers.2.blocks.{b}.": 7 + b for b in range(8)}, "layers.2.downsample.": 15,
             **{f"layers.3.blocks.{b}.": 15 + b for b in range(4)}, "norm.": 19, "head.": 19}
VIM_2 = {"cls_token": 0, "pos_embed": 0, "patch_embed.": 0, "layers.0.": 1, "layers.1.": 2, "norm_f.": 3, "head.": 3}
# dyvm_vim_mnist: 6 layers, score predictors before layers 2 and 4 share those layers' ids (3 and 5).
DYVM_MNIST = {"cls_token": 0, "pos_embed": 0, "patch_embed.": 0, **{f"layers.{i}.": i + 1 for i in range(6)},
              "score_predictor.0.": 3, "score_predictor.1.": 5, "norm_f.": 7, "head.": 7}

FAMILIES = [("vmamba_tiny_s1l8", {}, VMAMBA_T, 16), ("pvmamba_tiny", {}, PVMAMBA_T, 20),
            ("vim_mnist", {"embed_dim": 16, "depth": 2}, VIM_2, 4), ("dyvm_vim_mnist", {"embed_dim": 16}, DYVM_MNIST, 8)]


def _expected_id(table, name):
    hits = [v for prefix, v in table.items() if name == prefix or name.startswith(prefix)]
    assert len(hits) == 1, (name, hits)
    return hits[0]


def _expected_no_decay(name, p):
    # Norms, biases (every 1-D tensor), the SSM's A_log/D and the position embeddings/class token.
    leaf = name.rsplit(".", 1)[-1]
    return p.ndim <= 1 or leaf in ("bias", "pos_embed", "cls_token", "A_log", "A_b_log", "D", "D_b", "Ds", "A_logs")


@pytest.mark.parametrize("name, kwargs, table, num_layers", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_layer_decay_groups_and_lr_scales_per_family(name, kwargs, table, num_layers):
    model = models.create_model(name, **kwargs)
    ids, n = models.layer_ids(model)
    assert n == num_layers
    params = dict(model.named_parameters())
    for pname in params:
        assert ids[pname] == _expected_id(table, pname), pname
    decay = 0.75
    opt = optim.build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=decay)
    seen = collections.Counter()
    by_id = {id(p): k for k, p in params.items()}
    for group in opt.param_groups:
        for p in group["params"]:
            pname = by_id[id(p)]
            seen[pname] += 1
            assert group["lr_scale"] == pytest.approx(decay ** (num_layers - 1 - ids[pname])), pname
            assert (group["weight_decay"] == 0.0) == _expected_no_decay(pname, p), pname
    assert set(seen) == set(params) and set(seen.values()) == {1}  # each parameter in exactly one group
    # Norms, biases and position embeddings are never decayed; the embeddings get the smallest lr, the head 1.
    for pname, p in params.items():
        if "norm" in pname or pname.endswith(".bias") or pname.rsplit(".", 1)[-1] == "pos_embed":
            assert _expected_no_decay(pname, p), pname
    head = [g for g in opt.param_groups if g["layer_id"] == num_layers - 1]
    stem = [g for g in opt.param_groups if g["layer_id"] == 0]
    assert head and all(g["lr_scale"] == 1.0 for g in head)
    assert stem and all(g["lr_scale"] == pytest.approx(decay ** (num_layers - 1)) for g in stem)
    # The schedule sets each group's lr to the scheduled lr times its scale.
    sched = optim.WarmupCosine(opt, 1e-3, total_steps=10, warmup_steps=0)
    base = sched.set_step(3)
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(base * group["lr_scale"])
    assert optim.peak_group_lr(opt) == pytest.approx(base)


def test_without_layer_decay_there_are_the_two_groups_as_before():
    model = models.create_model("vim_mnist", embed_dim=16, depth=2)
    opt = optim.build_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 1.0]


def test_layer_decay_in_the_trainer_and_its_checks(tmp_path, capsys):
    code, err = main_in_process([*TINY, "--epochs=1", "--layer_decay=0.5", f"--output={tmp_path / 'ok'}"], capsys)
    assert code == 0, err[-2000:]
    import json
    row = json.loads((tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()[-1])
    # The schedule's lr at the last step (10 steps, 5 of warmup), i.e. the head's group, not the embeddings'.
    sched = optim.WarmupCosine(torch.optim.SGD([torch.zeros(1)], lr=1.0), 3e-3, 10, 5, 1e-6, 1e-5)
    assert row["lr"] == pytest.approx(sched.lr_at(9))
    code, err = main_in_process([*TINY, "--layer_decay=0", f"--output={tmp_path / 'x'}"], capsys)
    assert_usage_error(code, err, "--layer_decay must be a finite number in (0.0, 1.0], got 0.0")


# ------------------------------------------------------------------------------------------------
# Repeated augmentation


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [48, 50])
def test_repeated_aug_sampler_yields_each_index_the_expected_number_of_times_across_ranks(world, n):
    repeats = 3
    per_rank = {r: data.EpochSampler(n, True, seed=5, rank=r, world_size=world, repeats=repeats) for r in range(world)}
    for s in per_rank.values():
        s.set_epoch(2)
    lists = {r: list(s) for r, s in per_rank.items()}
    assert {len(v) for v in lists.values()} == {math.ceil(n / world)}  # the epoch keeps its length
    total = math.ceil(n / world) * world
    counts = collections.Counter(i for v in lists.values() for i in v)
    # DeiT's RASampler: the first total // 3 indices of the permutation 3 times, then one index total % 3 times.
    hist = collections.Counter(counts.values())
    assert hist[repeats] == total // repeats
    assert sum(hist.values()) == total // repeats + (1 if total % repeats else 0)
    assert sum(counts.values()) == total and all(0 <= i < n for i in counts)
    if world >= repeats:  # DDP-aware: a sample's copies go to different processes
        for i in counts:
            ranks = [r for r, v in lists.items() if i in v]
            assert len(ranks) == counts[i], (i, ranks)
    # Resumable at a sample offset, and a pure function of (seed, epoch).
    s = data.EpochSampler(n, True, seed=5, rank=world - 1, world_size=world, repeats=repeats)
    s.set_epoch(2, start_sample=5)
    assert list(s) == lists[world - 1][5:] and len(s) == len(lists[world - 1]) - 5


def test_repeated_aug_copies_are_tagged_and_augmented_differently_on_mnist():
    s = data.EpochSampler(10, True, seed=1, repeats=3, tag_copies=True)
    order = list(s)
    assert len(order) == 10
    decoded = [divmod(i, 10) for i in order]  # (copy, index)
    assert [c for c, _ in decoded[:9]] == [0, 1, 2] * 3 and len({i for _, i in decoded[:3]}) == 1
    train_set, _ = data.mnist5k_datasets(limit=10)
    train_set.set_epoch(0)
    copies = [train_set[k * 10 + 3][0] for k in range(3)]
    assert train_set[3][1] == train_set[23][1]
    assert not torch.equal(copies[0], copies[1]) or not torch.equal(copies[0], copies[2])
    assert torch.equal(copies[0], train_set[3][0])  # copy 0 is the plain item (unchanged seeds)


def test_trainer_repeated_aug_and_colour_jitter(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VISIONSSM_CALLER_DIR", str(tmp_path))
    make_folder(tmp_path / "folder", {"train": 8, "val": 2})
    config.FLAGS.unparse_flags()
    with process_state_restored():
        config.FLAGS(["train", *TINY, "--limit_train=0", "--batch_size=4", "--img_size=32", "--repeated_aug=3",
                      "--color_jitter=0.3", f"--data_path={tmp_path / 'folder'}", "--output=o"])
        cfg = config.resolve()
        trainer = train.Trainer(cfg, explicit=config.explicit_keys(), run_dir=False)
    config.FLAGS.unparse_flags()
    assert trainer.train_sampler.repeats == 3 and trainer.steps_per_epoch == 4  # 16 images, 4 per step
    from torchvision import transforms
    jitter = [t for t in trainer.train_set.transform.transforms if isinstance(t, transforms.ColorJitter)]
    assert len(jitter) == 1 and jitter[0].brightness == pytest.approx((0.7, 1.3))
    code, err = main_in_process([*TINY, "--repeated_aug=65", f"--output={tmp_path / 'x'}"], capsys)
    assert_usage_error(code, err, "--repeated_aug must be in 0..64, got 65")


# ------------------------------------------------------------------------------------------------
# MESA


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)
        self.drop = torch.nn.Dropout(0.5)  # eval mode must switch it off for the EMA teacher

    def forward(self, x):
        return self.fc(self.drop(x))


def _by_hand(w, b, x):
    return [[sum(w[c][k] * xi[k] for k in range(len(xi))) + b[c] for c in range(len(b))] for xi in x]


def test_mesa_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    student = _Tiny().double()
    ema = engine.ModelEma(student, 0.9)
    with torch.no_grad():
        ema.module.fc.weight.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]]))
        ema.module.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        student.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        student.fc.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    student.eval()  # deterministic student logits for the hand computation
    ema.module.train()  # the term must evaluate the EMA model in eval mode, whatever its mode
    x = [[1.0, 2.0], [-0.5, 0.5]]
    y = [2, 0]
    weight = 0.7
    task = models.build_task(student, mesa=weight)
    loss, logits = task.loss(student, torch.tensor(x, dtype=torch.float64), torch.tensor(y), ema=ema.module)
    zs = _by_hand(student.fc.weight.tolist(), student.fc.bias.tolist(), x)
    ze = _by_hand(ema.module.fc.weight.tolist(), ema.module.fc.bias.tolist(), x)
    ce = soft = 0.0
    for z, e, t in zip(zs, ze, y):
        logz = math.log(sum(math.exp(v) for v in z))
        ce += -(z[t] - logz)
        pe = [math.exp(v) / sum(math.exp(u) for u in e) for v in e]
        soft += -sum(p * (v - logz) for p, v in zip(pe, z))
    expected = ce / len(x) + weight * soft / len(x)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # the task computes in float32
    assert ema.module.training  # its mode is restored
    loss.backward()  # the teacher gets no gradient
    assert student.fc.weight.grad is not None and ema.module.fc.weight.grad is None
    off, _ = task.loss(student, torch.tensor(x, dtype=torch.float64), torch.tensor(y))  # before mesa_start
    assert off.item() == pytest.approx(ce / len(x), rel=1e-6)


def test_mesa_in_the_trainer_starts_at_its_epoch_and_needs_the_ema(tmp_path, capsys):
    code, err = main_in_process([*TINY, "--mesa", f"--output={tmp_path / 'x'}"], capsys)
    assert_usage_error(code, err, "--mesa", "needs --ema_decay")
    out = tmp_path / "run"
    code, err = main_in_process([*TINY, "--epochs=2", "--mesa", "--mesa_start=0.5", "--mesa_weight=2",
                                 "--ema_decay=0.9", f"--output={out}"], capsys)
    assert code == 0, err[-2000:]
    import json
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["mesa"] for r in rows] == [False, True]  # epochs e >= 0.5 · 2 (0-based)


def test_trainer_loss_adds_the_mesa_term_when_on(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSM_CALLER_DIR", str(tmp_path))
    config.FLAGS.unparse_flags()
    with process_state_restored():
        config.FLAGS(["train", *TINY, "--epochs=4", "--mesa", "--mesa_weight=0.5", "--ema_decay=0.5", "--output=o"])
        trainer = train.Trainer(config.resolve(), explicit=config.explicit_keys(), run_dir=False)
    config.FLAGS.unparse_flags()
    images = torch.stack([trainer.train_set[i][0] for i in range(4)])
    targets = torch.tensor([trainer.train_set[i][1] for i in range(4)])
    with torch.no_grad():  # an EMA that differs from the model
        for p in trainer.ema.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.unwrapped.eval()  # no drop-path randomness between the calls
    assert not trainer.mesa_active(0) and trainer.mesa_active(1)  # 0.25 × 4 epochs: on from epoch 1 (0-based)
    trainer.mesa_on = False
    plain, logits = trainer.compute_loss(images, targets, None)
    trainer.mesa_on = True
    with_mesa, _ = trainer.compute_loss(images, targets, None)
    term = models.tasks.mesa_term(logits, trainer.ema.module, images)
    assert with_mesa.item() == pytest.approx(plain.item() + 0.5 * term.item(), rel=1e-5)
    assert term.item() > 0
