"""VisionSSM trainer: `./bazelw run //py/training:train -- [--flags]` (see --helpfull).

With no arguments it trains a small Vim (vim_mnist) on the embedded MNIST-5k on the CPU in a few
minutes and prints its validation accuracy. With --config and --data_path it runs the papers'
ImageNet recipes (py/training/configs/), on one or many GPUs via torchrun.

Outputs under --output: checkpoints/ (safetensors weights + optimizer/scheduler/scaler/EMA/RNG
state, written atomically), metrics.jsonl (one line per epoch), TensorBoard events, config.json.
"""
import json
import logging
import pathlib
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from absl import app

from py.ops import cpu_allocator
from py.training import checkpoint, config, data, engine, optim

log = logging.getLogger("visionssm.train")


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stop_signal = None
        self._setup_device_and_seed()
        self._setup_data()
        self._setup_model()
        self._setup_optimisation()

    # -- setup ------------------------------------------------------------------------------
    def _setup_device_and_seed(self):
        cfg = self.cfg
        kind = cfg["device"]
        if kind == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        if kind == "cuda" and not torch.cuda.is_available():
            raise config.ConfigError("--device=cuda but torch sees no CUDA device")
        self.rank, self.world_size, local_rank = engine.init_distributed(kind)
        self.device = torch.device(kind, local_rank) if kind == "cuda" else torch.device("cpu")
        if kind == "cuda":
            torch.cuda.set_device(self.device)
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        if cfg["amp"] == "fp16" and kind != "cuda":
            raise config.ConfigError("--amp=fp16 needs CUDA (use --amp=bf16 on the CPU)")
        seed = cfg["seed"] + self.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.is_main = self.rank == 0

    def _setup_data(self):
        cfg = self.cfg
        if cfg["dataset"] == "mnist5k":
            self.train_set, self.val_set = data.mnist5k_datasets(
                cfg["val_fraction"], cfg["seed"], cfg["in_chans"], cfg["img_size"], cfg["limit_train"] or None)
            self.num_classes = data.MNIST_CLASSES
        else:
            from timm.data import create_transform
            train_tf = create_transform(cfg["img_size"], is_training=True, auto_augment=cfg["randaug"] or None,
                                        re_prob=cfg["reprob"], interpolation="bicubic")
            val_tf = data.imagefolder_eval_transform(cfg["img_size"])
            self.train_set, self.val_set = data.imagefolder_datasets(cfg["data_path"], train_tf, val_tf)
            if cfg["limit_train"]:
                self.train_set = torch.utils.data.Subset(self.train_set, range(min(cfg["limit_train"], len(self.train_set))))
            self.num_classes = len(self.val_set.classes)
        if len(self.train_set) == 0:
            raise config.ConfigError("the training set is empty")
        workers = cfg["num_workers"] if cfg["num_workers"] is not None else (
            0 if cfg["dataset"] == "mnist5k" else data.num_workers_default())
        self.train_sampler = data.EpochSampler(len(self.train_set), True, cfg["seed"], self.rank, self.world_size)
        self.val_sampler = data.EpochSampler(len(self.val_set), False, 0, self.rank, self.world_size)
        loader = lambda ds, sampler, drop: torch.utils.data.DataLoader(
            ds, batch_size=cfg["batch_size"], sampler=sampler, num_workers=workers, drop_last=drop,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
            # run's dropout/drop-path masks would drift from the uninterrupted run's.
            generator=torch.Generator().manual_seed(cfg["seed"]))
        self.make_train_loader = lambda: loader(self.train_set, self.train_sampler, True)
        self.val_loader = loader(self.val_set, self.val_sampler, False)
        per_step = cfg["batch_size"] * cfg["accum_steps"]
        self.steps_per_epoch = self.train_sampler.per_rank // per_step
        if self.steps_per_epoch == 0:
            raise config.ConfigError(f"batch_size × accum_steps = {per_step} exceeds the {self.train_sampler.per_rank} "
                                     "training samples per process")
        self.mixup = None
        if cfg["mixup"] > 0 or cfg["cutmix"] > 0:
            from timm.data import Mixup
            self.mixup = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"],
                               label_smoothing=cfg["label_smoothing"], num_classes=self.num_classes)

    def _setup_model(self):
        cfg = self.cfg
        import py.models as models
        kwargs = dict(cfg["model_kwargs"])
        if cfg["drop_path"]:
            kwargs["drop_path_rate"] = cfg["drop_path"]
        kwargs.setdefault("in_chans", cfg["in_chans"])  # the data decides (vim_mnist on RGB folders: 3)
        try:
            model = models.create_model(cfg["model"], num_classes=self.num_classes, img_size=cfg["img_size"], **kwargs)
        except (ValueError, TypeError) as exc:
            raise config.ConfigError(f"cannot build --model={cfg['model']} with {kwargs}: {exc}")
        if cfg["finetune"]:
            if hasattr(model, "load_pretrained_vim"):  # DyVM: backbone from Vim, fresh predictors/heads
                model.load_pretrained_vim(cfg["finetune"])
            else:
                models.load_checkpoint(model, cfg["finetune"])
        self.unwrapped = model.to(self.device)
        self.ema = engine.ModelEma(self.unwrapped, cfg["ema_decay"]) if cfg["ema_decay"] > 0 else None
        self.loss_module = None
        self.teacher = None
        if cfg["teacher_model"]:
            tkwargs = dict(cfg["teacher_model_kwargs"])
            tkwargs.setdefault("in_chans", cfg["in_chans"])
            try:
                self.teacher = models.create_model(cfg["teacher_model"], num_classes=self.num_classes,
                                                   img_size=cfg["img_size"], **tkwargs)
            except (ValueError, TypeError) as exc:
                raise config.ConfigError(f"cannot build --teacher_model={cfg['teacher_model']} with {tkwargs}: {exc}")
            if cfg["teacher_checkpoint"]:
                models.load_checkpoint(self.teacher, cfg["teacher_checkpoint"])
            self.teacher = self.teacher.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        if hasattr(self.unwrapped, "build_loss"):  # DyVM: its loss needs the model's decisions
            self.loss_module = self.unwrapped.build_loss(teacher=self.teacher, label_smoothing=cfg["label_smoothing"])
        model = self.unwrapped
        if cfg["compile"]:
            model = torch.compile(model)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        self.num_params = sum(p.numel() for p in self.unwrapped.parameters())

    def _setup_optimisation(self):
        cfg = self.cfg
        self.optimizer = optim.build_optimizer(self.unwrapped, cfg["lr"], cfg["weight_decay"])
        # --max_steps stops a run early; the schedule always spans --epochs, so a run stopped there
        # and resumed follows exactly the uninterrupted run.
        total = self.steps_per_epoch * cfg["epochs"]
        self.total_steps = total
        self.schedule = optim.WarmupCosine(self.optimizer, cfg["lr"], total,
                                           round(cfg["warmup_epochs"] * self.steps_per_epoch),
                                           cfg["warmup_lr"], cfg["min_lr"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg["amp"] == "fp16")
        self.global_step = 0

    # -- pieces used by the engine -----------------------------------------------------------
    def compute_loss(self, images, targets, soft_targets):
        if self.loss_module is not None:
            return self.loss_module(self.model, images, targets if soft_targets is None else soft_targets)
        logits = self.model(images)
        if soft_targets is not None:
            loss = torch.sum(-soft_targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.cfg["label_smoothing"])
        return loss, logits

    def progress_bar(self, **kwargs):
        from tqdm import tqdm
        return tqdm(disable=not (self.is_main and self.cfg["progress"]), unit="step", dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr, **kwargs)

    # -- state -------------------------------------------------------------------------------
    def train_state(self, epoch, step_in_epoch, running):
        return {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
            "running": dict(running) if running else None, "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "config": self.cfg,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def save(self, epoch, step_in_epoch, running):
        if not engine.params_finite(self.unwrapped):
            log.error("parameters are not finite: not writing a checkpoint (the previous one stays latest)")
            return None
        if not self.is_main:
            return None
        return checkpoint.save(self.ckpt_root, self.global_step, self.unwrapped.state_dict(),
                               self.ema.module.state_dict() if self.ema else None,
                               self.train_state(epoch, step_in_epoch, running), keep=self.cfg["keep_checkpoints"])

    def restore(self, path, states):
        model_state, ema_state, state = states
        self.unwrapped.load_state_dict(model_state)
        if self.ema is not None and ema_state is not None:
            self.ema.module.load_state_dict(ema_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.global_step = state["global_step"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        log.info("resumed from %s (epoch %d, step %d)", path, state["epoch"] + 1, state["global_step"])
        return state["epoch"], state["step_in_epoch"], state["running"]

    # -- main loop ---------------------------------------------------------------------------
    def run(self):
        cfg = self.cfg
        out = pathlib.Path(cfg["output"])
        self.ckpt_root = out / "checkpoints"
        start_epoch, start_step, running = 0, 0, None
        resume_from = None
        if cfg["resume"] == "auto":
            resume_from = self.ckpt_root
        elif cfg["resume"] != "none":
            given = config.caller_path(cfg["resume"])
            resume_from = given / "checkpoints" if (given / "checkpoints").is_dir() else given
            if not resume_from.exists():
                raise config.ConfigError(f"--resume {given} does not exist")
        if resume_from is not None:
            if (resume_from / "model.safetensors").is_file():
                path, states = resume_from, checkpoint.load(resume_from)
            else:
                path, states = checkpoint.find_resumable(resume_from)
            if states is not None:
                start_epoch, start_step, running = self.restore(path, states)
            elif cfg["resume"] not in ("auto", "none"):
                raise config.ConfigError(f"--resume {resume_from}: no loadable checkpoint there")
        writer = None
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            checkpoint.write_json(out / "config.json", cfg)
            try:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError as exc:
                log.warning("TensorBoard events disabled: %s", exc)
            print(f"[train] {cfg['model']}: {self.num_params:,} params | {cfg['dataset']} "
                  f"{len(self.train_set)} train / {len(self.val_set)} val | {self.world_size} process(es) on "
                  f"{self.device} | {cfg['epochs']} epochs × {self.steps_per_epoch} steps | output {out}",
                  file=sys.stderr)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

        t_start = time.perf_counter()
        result = {}
        epoch = start_epoch
        for epoch in range(start_epoch, cfg["epochs"]):
            if running is None:
                running = {"loss_sum": 0.0, "count": 0, "correct": 0, "skipped_steps": 0, "seconds": 0.0,
                           "images": 0}
            self.train_sampler.set_epoch(epoch, start_step * cfg["batch_size"] * cfg["accum_steps"])
            if hasattr(self.train_set, "set_epoch"):
                self.train_set.set_epoch(epoch)
            state = {"stop": False}

            def on_step_end(step_in_epoch, epoch=epoch, running=running, state=state):
                reached_max = cfg["max_steps"] and self.global_step >= cfg["max_steps"]
                periodic = cfg["ckpt_every_steps"] and self.global_step % cfg["ckpt_every_steps"] == 0
                if self.stop_signal is not None or reached_max:
                    state["stop"] = True
                    self.save(epoch, step_in_epoch, running)
                    return True
                if periodic and step_in_epoch < self.steps_per_epoch:
                    self.save(epoch, step_in_epoch, running)
                return False

            steps_done, images, seconds = engine.train_one_epoch(
                self, epoch, self.make_train_loader(), start_step, running, on_step_end)
            running["seconds"] += seconds
            running["images"] += images
            start_step = 0
            if state["stop"]:
                if self.stop_signal is not None:
                    print(f"[train] {signal.Signals(self.stop_signal).name}: saved a checkpoint at step "
                          f"{self.global_step}; continue with --resume=auto --output={out}", file=sys.stderr)
                    sys.exit(128 + self.stop_signal)
                break
            result = self._end_of_epoch(epoch, running, writer, out)
            self.save(epoch + 1, 0, None)
            running = None
        total_time = time.perf_counter() - t_start
        if self.is_main:
            if writer is not None:
                writer.close()
            if result:
                ema = f", EMA {result['val_top1_ema']:.2f}%" if "val_top1_ema" in result else ""
                print(f"[train] done in {engine.seconds_to_text(total_time)}: val top-1 {result['val_top1']:.2f}%, "
                      f"top-5 {result['val_top5']:.2f}%{ema} after {result['epoch']} epochs; "
                      f"outputs in {out}", file=sys.stderr)
        return result

    def _end_of_epoch(self, epoch, running, writer, out):
        cfg = self.cfg
        loss_sum, count, correct, images, skipped = engine.all_reduce_sum(
            [running["loss_sum"], running["count"], running["correct"], running["images"], running["skipped_steps"]],
            self.device)
        top1, top5, val_loss, per_class = engine.evaluate(self.model, self.val_loader, self.device, cfg["amp"],
                                                          self.num_classes)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1), "val_top1": top1, "val_top5": top5,
               "val_loss": val_loss, "lr": self.optimizer.param_groups[0]["lr"],
               "img_per_s": images / max(running["seconds"], 1e-9), "seconds": running["seconds"],
               "step": self.global_step, "skipped_steps": int(skipped)}
        if self.mixup is None:
            row["train_top1"] = 100.0 * correct / max(count, 1)
        if self.ema is not None:
            row["val_top1_ema"], row["val_top5_ema"], _, _ = engine.evaluate(
                self.ema.module, self.val_loader, self.device, cfg["amp"], self.num_classes)
        if hasattr(self.unwrapped, "keep_ratio_report"):  # DyVM: achieved keep ratios and cost
            row.update(self.unwrapped.keep_ratio_report())
            if self.is_main:
                row["gflops_per_image"] = self._inference_gflops()
                self.unwrapped.keep_ratio_report()  # drop the counting forward's gates from next epoch's ratio
        if self.is_main:
            checkpoint.append_line(out / "metrics.jsonl", json.dumps(row))
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
            dyvm = "".join(f", {label} {row[key]:.3g}" for key, label in (
                ("token_keep_ratio", "tokens kept"), ("block_keep_ratio", "blocks kept"),
                ("gflops_per_image", "GFLOPs/image")) if key in row)
            print(f"[train] epoch {epoch + 1}/{cfg['epochs']}: train loss {row['train_loss']:.4f}, val top-1 "
                  f"{top1:.2f}%, top-5 {top5:.2f}%, {row['img_per_s']:.0f} img/s, "
                  f"{engine.seconds_to_text(running['seconds'])}{dyvm}", file=sys.stderr)
        return row

    def _inference_gflops(self):
        """Inference GFLOPs per image on a fixed slice of the validation set (DyVM's token pruning and
        block skipping depend on the image, so its cost is measured on real images, not a random one)."""
        from py.models import count_flops
        n = min(16, len(self.val_set))
        images = torch.stack([self.val_set[i][0] for i in range(n)]).to(self.device)
        return count_flops(self.unwrapped, inputs=images)["total"] / n / 1e9

    def _on_signal(self, signum, frame):
        if self.stop_signal is not None:  # second signal: give up at once
            sys.exit(128 + signum)
        self.stop_signal = signum
        print(f"\n[train] {signal.Signals(signum).name} received: saving a checkpoint after this step "
              "(send again to exit without saving)", file=sys.stderr)


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]} (flags are --name=value; see --helpfull)", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s %(message)s")
    cpu_allocator.keep_freed_memory()  # large CPU tensors reuse freed memory instead of faulting in new pages
    try:
        cfg = config.resolve()
        Trainer(cfg).run()
    except (config.ConfigError, FileNotFoundError) as exc:  # bad flags, paths or dataset layout
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except engine.NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(3)
    finally:
        engine.shutdown_distributed()


def run():
    app.run(main, flags_parser=config.parse_flags_or_exit)


if __name__ == "__main__":
    run()
