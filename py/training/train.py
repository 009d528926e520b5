"""VisionSSM trainer: `./bazelw run //py/training:train -- [--flags]` (see --helpfull).

With no arguments it trains a small Vim (vim_mnist) on the embedded MNIST-5k on the CPU in a few
minutes and prints its validation accuracy. With --config and --data_path it runs the papers'
ImageNet recipes (py/training/configs/), on one or many GPUs via torchrun.

Outputs under --output: checkpoints/ (safetensors weights + optimizer/scaler/RNG state that loads
without unpickling, checksummed, written atomically), metrics.jsonl (one line per epoch), TensorBoard
events, config.json; train.lock keeps a second trainer out of the same --output.
"""
import json
import logging
import os
import pathlib
import random
import signal
import sys
import time

import numpy as np
import torch
from absl import app

from py.common import files
from py.models import weights
from py.ops import cpu_allocator
from py.training import checkpoint, config, data, engine, optim

log = logging.getLogger("visionssm.train")

# Exceptions that are the user's input (flags, paths, configs, data, checkpoints): one `error:` line, exit 2.
USAGE_ERRORS = (config.ConfigError, data.DataError, weights.WeightsError, FileNotFoundError)


def note(message):
    print(f"[train] {message}", file=sys.stderr, flush=True)


class Trainer:
    """Setup (device, run directory, data, model, optimisation) in the constructor, training in run().

    explicit: the flags given on the command line or by --config (config.explicit_keys()); on a resume
    the others take the run's values. None: all of them count as given. run_dir=False skips the run
    directory (lock, resume) for tools that only want the setup."""

    def __init__(self, cfg, explicit=None, run_dir=True):
        self.cfg = cfg
        self.stop_signal = None
        self.lock = None
        self.resumed = None
        self._created_output = False
        self.ckpt_root = pathlib.Path(cfg["output"]) / "checkpoints"
        try:
            self._setup_device()
            if run_dir:
                self._setup_run_dir(explicit)
            self._setup_seed()
            self._setup_data()
            self._setup_model()
            self._setup_optimisation()
        except BaseException:
            self.close(failed=True)
            raise

    def close(self, failed=False):
        """Releases the run directory; after a failed setup, removes an --output it created itself."""
        if self.lock is not None:
            out = pathlib.Path(self.cfg["output"])
            empty = failed and self._created_output and [p.name for p in out.iterdir()] == [checkpoint.LOCK_NAME]
            if empty:
                (out / checkpoint.LOCK_NAME).unlink()  # while still holding it
            self.lock.release()
            self.lock = None
            if empty:
                try:
                    out.rmdir()
                except OSError:  # someone else put something there meanwhile
                    pass

    # -- setup ------------------------------------------------------------------------------
    def _setup_device(self):
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
        self.is_main = self.rank == 0

    def _agree(self, failure):
        """Raises ConfigError on every rank if rank 0 reported a failure (so no rank waits forever)."""
        failed = engine.all_reduce_sum([1.0 if failure else 0.0], self.device)[0]
        if failure:
            raise config.ConfigError(failure)
        if failed:
            raise config.ConfigError("rank 0 could not set up the run directory (see its error)")

    def _setup_run_dir(self, explicit):
        """Locks --output, removes leftovers of killed saves, finds the checkpoint to resume from and
        reconciles the settings with the run's."""
        cfg = self.cfg
        out = pathlib.Path(cfg["output"])
        failure = None
        if self.is_main:
            try:
                self._created_output = not out.exists()
                out.mkdir(parents=True, exist_ok=True)
                self.lock = checkpoint.RunLock(out / checkpoint.LOCK_NAME)
                previous = self.lock.acquire()
                if previous:
                    note(f"took over {out / checkpoint.LOCK_NAME} from {checkpoint.describe_holder(previous)}, which no "
                         "longer holds it")
                removed = checkpoint.remove_temp(self.ckpt_root)
                if removed:
                    note(f"removed {len(removed)} leftover(s) of an interrupted save in {self.ckpt_root}: "
                         f"{', '.join(removed)}")
            except checkpoint.LockHeld as exc:
                failure = str(exc)
            except OSError as exc:
                failure = f"--output {out}: cannot use it ({exc.strerror or exc}: {exc.filename or out})"
        self._agree(failure)
        if cfg["resume"] == "never":
            if self.is_main:
                self._move_previous_run(out)
            return
        mode = cfg["resume"]
        source = self.ckpt_root if mode == "auto" else pathlib.Path(mode)
        if weights.is_step_dir(source):  # one step dir, named by the user
            try:
                found, problems = checkpoint.read_step_dir(source, cfg["trust_pickle"]), []
            except weights.WeightsError as exc:
                raise config.ConfigError(f"--resume {source}: {exc}")
            root = source.parent
        else:
            root = source if mode == "auto" else (source / "checkpoints" if (source / "checkpoints").is_dir() else source)
            found, problems = checkpoint.find_good(root, cfg["trust_pickle"])
        own = root.is_dir() and self.ckpt_root.is_dir() and root.resolve() == self.ckpt_root.resolve()
        if found is None:
            if problems:
                listed = "; ".join(f"{d.name}: {reason}" for d, reason in problems)
                raise config.ConfigError(
                    f"{len(problems)} checkpoint(s) in {root} exist but none can be resumed ({listed}); nothing was "
                    "started, pruned or overwritten. Fix or move them, pass --trust_pickle for old-format checkpoints "
                    "you trust, or start fresh with --resume=never (which moves them aside)")
            if mode != "auto":
                raise config.ConfigError(f"--resume {source}: no checkpoint there (expected checkpoints/step_*/)")
        elif problems and self.is_main:
            note(f"resuming from {found.path.name}, the newest checkpoint that verifies; skipped "
                 + "; ".join(f"{d.name} ({reason})" for d, reason in problems))
        run_cfg, where = None, None
        if found is not None:
            run_cfg, where = found.config, f"the run config of {found.path}"
            if run_cfg is None:
                raise config.ConfigError(f"--resume: {found.path} holds no config.json, so its settings are unknown")
        elif (out / "config.json").is_file():  # a run that stopped before its first checkpoint
            where = f"the run config {out / 'config.json'}"
            try:
                run_cfg = json.loads((out / "config.json").read_text())
            except (ValueError, UnicodeDecodeError, OSError) as exc:
                raise config.ConfigError(f"{where} is unreadable ({exc}); move it away or use --resume=never")
        if run_cfg is not None:
            self.cfg, diffs = config.merge_run_config(cfg, run_cfg, explicit, cfg["allow_config_change"], where)
            if diffs and self.is_main:
                note("--allow_config_change: continuing with settings that differ from the run's: " + "; ".join(
                    f"{k}: {json.dumps(o, default=str)} -> {json.dumps(n, default=str)}" for k, o, n in diffs))
        self.resumed = found
        if found is not None and own:
            # Checkpoints newer than the one resumed from (failed checks, or passed over by an explicit
            # --resume) would be overwritten or outlive it: move them aside, never delete them.
            engine.all_reduce_sum([0.0], self.device)  # every rank has read its checkpoint
            if self.is_main:
                step = weights.step_of(found.path)
                for d in checkpoint.checkpoint_dirs(self.ckpt_root):
                    if d.name != found.path.name and (weights.step_of(d) or 0) >= step:
                        note(f"moved checkpoint {d.name} to {checkpoint.set_aside(self.ckpt_root, d)} (not the one "
                             "resumed from; kept for inspection)")

    def _move_previous_run(self, out):
        """--resume=never: an earlier run's outputs go to <output>/previous-<time>/, nothing is deleted."""
        names = [n for n in ("checkpoints", "metrics.jsonl", "config.json", "tensorboard") if (out / n).exists()]
        if not names:
            return
        dest = out / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while dest.exists():
            dest = out / f"previous-{time.strftime('%Y%m%d-%H%M%S')}.{n}"
            n += 1
        dest.mkdir()
        for name in names:
            os.replace(out / name, dest / name)
        note(f"--resume=never: moved the earlier run's {', '.join(names)} to {dest} (nothing deleted); "
             "starting fresh")

    def _setup_seed(self):
        cfg = self.cfg
        seed = cfg["seed"] + self.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def _setup_data(self):
        cfg = self.cfg
        self.dense = cfg["task"] != "classification"
        self.class_names = None
        if self.dense:
            from py.training import dense
            self.train_set, self.val_set, info = dense.build_datasets(cfg)
            self.num_classes, self.class_names = info["num_classes"], info["class_names"]
            if cfg["limit_train"]:
                self.train_set = torch.utils.data.Subset(self.train_set, range(min(cfg["limit_train"], len(self.train_set))))
        elif cfg["dataset"] == "mnist5k":
            self.train_set, self.val_set = data.mnist5k_datasets(
                cfg["val_fraction"], cfg["seed"], cfg["in_chans"], cfg["img_size"], cfg["limit_train"] or None)
            self.num_classes = data.MNIST_CLASSES
        else:
            from timm.data import create_transform
            train_tf = create_transform(cfg["img_size"], is_training=True, auto_augment=cfg["randaug"] or None,
                                        color_jitter=cfg["color_jitter"], re_prob=cfg["reprob"],
                                        interpolation="bicubic")
            val_tf = data.imagefolder_eval_transform(cfg["img_size"])
            self.train_set, self.val_set = data.imagefolder_datasets(cfg["data_path"], train_tf, val_tf)
            self.train_set.check_readable("train")
            self.val_set.check_readable("val")
            if cfg["limit_train"]:
                self.train_set = torch.utils.data.Subset(self.train_set, range(min(cfg["limit_train"], len(self.train_set))))
            self.num_classes = len(self.val_set.classes)
        if len(self.train_set) == 0:
            raise config.ConfigError("the training set is empty")
        workers = cfg["num_workers"] if cfg["num_workers"] is not None else (
            0 if cfg["dataset"] == "mnist5k" else data.num_workers_default())
        train_collate, val_collate, val_batch = data.skip_collate, data.skip_collate, cfg["batch_size"]
        if self.dense:
            train_collate, val_collate = dense.train_collate(cfg["task"]), dense.val_collate
            val_batch = 1 if cfg["task"] == "segmentation" else cfg["batch_size"]  # whole images of any size
        self.train_sampler = data.EpochSampler(len(self.train_set), True, cfg["seed"], self.rank, self.world_size,
                                               repeats=cfg["repeated_aug"], tag_copies=cfg["dataset"] == "mnist5k")
        self.val_sampler = data.EpochSampler(len(self.val_set), False, 0, self.rank, self.world_size)
        loader = lambda ds, sampler, drop, batch, collate: torch.utils.data.DataLoader(
            ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=drop,
            pin_memory=self.device.type == "cuda", persistent_workers=False, collate_fn=collate,
            # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
            # run's dropout/drop-path masks would drift from the uninterrupted run's.
            generator=torch.Generator().manual_seed(cfg["seed"]))
        self.make_train_loader = lambda: loader(self.train_set, self.train_sampler, True, cfg["batch_size"],
                                                train_collate)
        self.val_loader = loader(self.val_set, self.val_sampler, False, val_batch, val_collate)
        per_step = cfg["batch_size"] * cfg["accum_steps"]
        self.steps_per_epoch = self.train_sampler.per_rank // per_step
        if self.steps_per_epoch == 0:
            limit = f" with --limit_train={cfg['limit_train']}" if cfg["limit_train"] else ""
            raise config.ConfigError(
                f"--batch_size × --accum_steps = {per_step} exceeds the {self.train_sampler.per_rank} training samples "
                f"per process ({len(self.train_set)} in the training set{limit}, {self.world_size} process(es))")
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
        if self.dense:  # RGB images; the model's own input size unless --img_size
            if cfg["backbone_checkpoint"]:
                kwargs["pretrained_backbone"] = cfg["backbone_checkpoint"]
            if cfg["multiscale"]:
                kwargs["skip_resize_in_training"] = True  # the data resizes (3x recipe)
        else:
            kwargs.setdefault("in_chans", cfg["in_chans"])  # the data decides (vim_mnist on RGB folders: 3)
        try:
            model = models.create_model(cfg["model"], num_classes=self.num_classes, img_size=cfg["img_size"], **kwargs)
        except (ValueError, TypeError) as exc:
            raise config.ConfigError(f"cannot build --model={cfg['model']} with {kwargs}: {exc}")
        if self.dense and self.world_size > 1 and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # 2 images per GPU: BN over all of them
        trust = bool(cfg.get("trust_pickle"))
        if cfg["finetune"]:  # adapted as for fine-tuning: new classifier size, pos_embed grid, DyVM heads
            self._load_weights(model, "finetune", adapt=True, trust_pickle=trust)
        self.unwrapped = model.to(self.device)
        self.ema = engine.ModelEma(self.unwrapped, cfg["ema_decay"]) if cfg["ema_decay"] > 0 else None
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
                self._load_weights(self.teacher, "teacher_checkpoint", adapt=False, trust_pickle=trust)
            self.teacher = self.teacher.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        # The model's training objective and per-epoch reports (py/models/tasks.py).
        self.task = models.build_task(self.unwrapped, teacher=self.teacher, label_smoothing=cfg["label_smoothing"],
                                      mesa=cfg["mesa_weight"] if cfg["mesa"] else 0.0)
        self.mesa_on = False  # set per epoch (run): MESA from epoch mesa_start × epochs on
        model = self.unwrapped
        if cfg["compile"]:
            model = torch.compile(model)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        self.num_params = sum(p.numel() for p in self.unwrapped.parameters())

    def _load_weights(self, model, flag, adapt, trust_pickle):
        """--finetune / --teacher_checkpoint through the one weights path; any problem is a usage error."""
        from py.models import weights
        try:
            weights.load_into(model, self.cfg[flag], adapt=adapt, trust_pickle=trust_pickle)
        except weights.WeightsError as exc:
            raise config.ConfigError(f"--{flag}: {exc}")

    def _setup_optimisation(self):
        cfg = self.cfg
        try:
            self.optimizer = optim.build_optimizer(self.unwrapped, cfg["lr"], cfg["weight_decay"],
                                                   layer_decay=cfg["layer_decay"], rule=cfg["no_decay_rule"])
        except (TypeError, ValueError) as exc:  # a model without the family's layer numbering
            raise config.ConfigError(f"--layer_decay={cfg['layer_decay']} with --model={cfg['model']}: {exc}")
        # --max_steps stops a run early; the schedule always spans --epochs, so a run stopped there
        # and resumed follows exactly the uninterrupted run.
        total = self.steps_per_epoch * cfg["epochs"]
        self.total_steps = total
        warmup = cfg["warmup_steps"] or round(cfg["warmup_epochs"] * self.steps_per_epoch)
        if cfg["schedule"] == "step":
            milestones = [e * self.steps_per_epoch for e in config.lr_step_epochs(cfg)]
            self.schedule = optim.WarmupStep(self.optimizer, cfg["lr"], total, milestones, cfg["lr_step_factor"],
                                             warmup, cfg["warmup_lr"])
        elif cfg["schedule"] == "poly":
            self.schedule = optim.WarmupPoly(self.optimizer, cfg["lr"], total, cfg["poly_power"], warmup,
                                             cfg["warmup_lr"], cfg["min_lr"])
        else:
            self.schedule = optim.WarmupCosine(self.optimizer, cfg["lr"], total, warmup, cfg["warmup_lr"],
                                               cfg["min_lr"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg["amp"] == "fp16")
        self.global_step = 0

    # -- pieces used by the engine -----------------------------------------------------------
    def compute_loss(self, images, targets, soft_targets):
        targets = targets if soft_targets is None else soft_targets
        if self.mesa_on:
            return self.task.loss(self.model, images, targets, ema=self.ema.module)
        return self.task.loss(self.model, images, targets)

    def mesa_active(self, epoch):
        """MESA's loss term is on in this 0-based epoch (upstream: epoch >= mesa_start · epochs)."""
        return bool(self.cfg["mesa"]) and epoch >= self.cfg["mesa_start"] * self.cfg["epochs"]

    def progress_bar(self, **kwargs):
        from tqdm import tqdm
        return tqdm(disable=not (self.is_main and self.cfg["progress"]), unit="step", dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr, **kwargs)

    # -- state -------------------------------------------------------------------------------
    def train_state(self, epoch, step_in_epoch, running):
        return {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
            "running": dict(running) if running else None, "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": checkpoint.pack_rng(),
        }  # tensors and plain values only: loads with weights_only=True (the config goes to config.json)

    def save(self, epoch, step_in_epoch, running):
        if not engine.params_finite(self.unwrapped):
            log.error("parameters are not finite: not writing a checkpoint (the previous one stays latest)")
            return None
        if not self.is_main:
            return None
        return checkpoint.save(self.ckpt_root, self.global_step, self.unwrapped.state_dict(),
                               self.ema.module.state_dict() if self.ema else None,
                               self.train_state(epoch, step_in_epoch, running), self.cfg,
                               keep=self.cfg["keep_checkpoints"])

    def restore(self, loaded):
        """Loads a verified checkpoint (checkpoint.Loaded); a checkpoint of another model is a usage error."""
        state = loaded.train_state
        try:
            self.unwrapped.load_state_dict(loaded.model_state)
            if self.ema is not None:
                self.ema.module.load_state_dict(loaded.ema_state if loaded.ema_state is not None else loaded.model_state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.global_step = int(state["global_step"])
            checkpoint.unpack_rng(state["rng"])
            epoch, step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise config.ConfigError(f"checkpoint {loaded.path} does not fit this model/optimizer: "
                                     f"{' '.join(str(exc).split())[:300]}")
        log.info("resumed from %s (epoch %d, step %d)", loaded.path, epoch + 1, self.global_step)
        return epoch, step_in_epoch, state["running"]

    # -- main loop ---------------------------------------------------------------------------
    def run(self):
        cfg = self.cfg
        out = pathlib.Path(cfg["output"])
        start_epoch, start_step, running = 0, 0, None
        if self.resumed is not None:
            start_epoch, start_step, running = self.restore(self.resumed)
            self.resumed = None  # free the loaded tensors
        writer = None
        if self.is_main:
            files.write_json(out / "config.json", cfg)
            try:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError as exc:
                log.warning("TensorBoard events disabled: %s", exc)
            print(f"[train] {cfg['model']} ({cfg['task']}): {self.num_params:,} params | {cfg['dataset']} "
                  f"{len(self.train_set)} train / {len(self.val_set)} val | {self.world_size} process(es) on "
                  f"{self.device} | {cfg['epochs']} epochs × {self.steps_per_epoch} steps | output {out}",
                  file=sys.stderr)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

        if cfg["max_steps"] and self.global_step >= cfg["max_steps"]:
            if self.is_main:
                note(f"--max_steps={cfg['max_steps']}: the run is already at step {self.global_step}, nothing to do "
                     "(raise or drop --max_steps to continue it)")
            if writer is not None:
                writer.close()
            return {}
        t_start = time.perf_counter()
        result = {}
        epoch = start_epoch
        for epoch in range(start_epoch, cfg["epochs"]):
            if running is None:
                running = {"loss_sum": 0.0, "count": 0, "correct": 0, "skipped_steps": 0, "seconds": 0.0,
                           "images": 0, "skipped_images": 0}
            self.train_sampler.set_epoch(epoch, start_step * cfg["batch_size"] * cfg["accum_steps"])
            if hasattr(self.train_set, "set_epoch"):
                self.train_set.set_epoch(epoch)
            self.mesa_on = self.mesa_active(epoch)
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
                # --max_steps: the checkpoint is written; record where the run stands.
                result = self._end_of_epoch(epoch, running, writer, out, partial=True)
                if self.is_main:
                    print(f"[train] --max_steps={cfg['max_steps']} reached at step {self.global_step} (epoch "
                          f"{epoch + 1}, partial); continue with --resume=auto --output={out}", file=sys.stderr)
                break
            result = self._end_of_epoch(epoch, running, writer, out)
            self.save(epoch + 1, 0, None)
            running = None
        total_time = time.perf_counter() - t_start
        if self.is_main:
            if writer is not None:
                writer.close()
            if result and not result.get("partial"):
                key = self.headline_keys()[0]
                ema = f", EMA {result[key + '_ema']:.2f}" if key + "_ema" in result else ""
                print(f"[train] done in {engine.seconds_to_text(total_time)}: {self.val_summary(result)}{ema} after "
                      f"{result['epoch']} epochs; outputs in {out}", file=sys.stderr)
        return result

    def _end_of_epoch(self, epoch, running, writer, out, partial=False):
        cfg = self.cfg
        loss_sum, count, correct, images, skipped, train_unreadable = engine.all_reduce_sum(
            [running["loss_sum"], running["count"], running["correct"], running["images"], running["skipped_steps"],
             running.get("skipped_images", 0)], self.device)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1)}
        val_stats = {}
        row.update(self._validate(self.model, val_stats))
        row.update({"lr": optim.peak_group_lr(self.optimizer),
                    "img_per_s": images / max(running["seconds"], 1e-9), "seconds": running["seconds"],
                    "step": self.global_step, "skipped_steps": int(skipped), "train_images": int(count),
                    "val_images": val_stats["images"], "train_skipped_images": int(train_unreadable),
                    "val_skipped_images": val_stats["skipped_images"]})
        if partial:
            row["partial"] = True  # stopped by --max_steps inside this epoch
        if cfg["mesa"]:
            row["mesa"] = self.mesa_on
        if self.mixup is None and not self.dense:
            row["train_top1"] = 100.0 * correct / max(count, 1)
        if self.ema is not None:
            row.update({f"{k}_ema": v for k, v in self._validate(self.ema.module).items()
                        if k in ("val_top1", "val_top5") or k in self.headline_keys()})
        # The task's extra metrics (e.g. achieved keep ratios and GFLOPs per image on fixed images).
        row.update(self.task.epoch_report(self.unwrapped, self._report_images() if self.is_main and not self.dense
                                          else None))
        if self.is_main:
            files.append_line(out / "metrics.jsonl", json.dumps(row))
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
            extra = "".join(f", {label} {row[key]:.3g}" for key, label in (
                ("token_keep_ratio", "tokens kept"), ("block_keep_ratio", "blocks kept"),
                ("gflops_per_image", "GFLOPs/image")) if key in row)
            skips = (f", unreadable images skipped: {row['train_skipped_images']} train, {row['val_skipped_images']} val"
                     if cfg["dataset"] not in ("mnist5k", "mnist_canvas") or row["train_skipped_images"]
                     or row["val_skipped_images"] else "")
            print(f"[train] epoch {epoch + 1}/{cfg['epochs']}{' (partial)' if partial else ''}: train loss "
                  f"{row['train_loss']:.4f}, {self.val_summary(row)} ({row['val_images']} images), "
                  f"{row['img_per_s']:.{2 if self.dense else 0}f} img/s, {engine.seconds_to_text(running['seconds'])}{extra}{skips}",
                  file=sys.stderr)
        return row

    def _validate(self, model, stats=None):
        """Validation metrics of `model` on the whole val split: top-1/top-5/loss (classification), COCO AP
        (detection: bbox_* and segm_*), mIoU/mAcc/aAcc (segmentation)."""
        if not self.dense:
            top1, top5, val_loss, _ = engine.evaluate(model, self.val_loader, self.device, self.cfg["amp"],
                                                      self.num_classes, stats=stats)
            return {"val_top1": top1, "val_top5": top5, "val_loss": val_loss}
        from py.training import dense
        if model is self.model:  # not the DDP/compiled wrapper: eval needs no sync, and sliding windows read
            model = self.unwrapped  # the model's own max_input_size (Vim), which a wrapper hides
        metrics = dense.evaluate(model, self.val_loader, self.device, self.cfg["amp"], self.val_set, self.cfg["task"],
                                 stats=stats if stats is not None else {})
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}  # per-class lists stay out

    def headline_keys(self):
        if not self.dense:
            return ("val_top1",)
        return ("bbox_AP", "segm_AP") if self.cfg["task"] == "detection" else ("mIoU", "mAcc", "aAcc")

    def val_summary(self, row):
        """The epoch line's validation part."""
        if not self.dense:
            return f"val top-1 {row['val_top1']:.2f}%, top-5 {row['val_top5']:.2f}%"
        if self.cfg["task"] == "detection":
            return (f"val box AP {row['bbox_AP']:.2f} (AP50 {row['bbox_AP50']:.2f}), mask AP {row['segm_AP']:.2f}"
                    if "segm_AP" in row else f"val box AP {row['bbox_AP']:.2f} (AP50 {row['bbox_AP50']:.2f})")
        return f"val mIoU {row['mIoU']:.2f}, mAcc {row['mAcc']:.2f}, aAcc {row['aAcc']:.2f}"

    def _report_images(self):
        """A fixed slice of the validation set (up to 16 readable images) for the task's epoch report:
        costs that depend on the image (token pruning, block skipping) are measured on real ones."""
        items = []
        for i in range(len(self.val_set)):
            item = self.val_set[i]
            if item is not None:  # unreadable images are skipped
                items.append(item[0])
            if len(items) == 16:
                break
        return torch.stack(items).to(self.device) if items else None

    def _on_signal(self, signum, frame):
        if self.stop_signal is not None:  # second signal: give up at once
            sys.exit(128 + signum)
        self.stop_signal = signum
        print(f"\n[train] {signal.Signals(signum).name} received: saving a checkpoint after this step "
              "(send again to exit without saving)", file=sys.stderr)


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]} (flags are --name=value; see --help)", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s %(message)s")
    cpu_allocator.keep_freed_memory()  # large CPU tensors reuse freed memory instead of faulting in new pages
    trainer = None
    try:
        cfg = config.resolve()
        trainer = Trainer(cfg, explicit=config.explicit_keys())
        trainer.run()
    except USAGE_ERRORS as exc:  # bad flags, paths, configs, data or checkpoints
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except engine.NonFiniteLoss as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(3)
    finally:
        if trainer is not None:
            trainer.close()
        engine.shutdown_distributed()


def one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def run():
    app.run(main, flags_parser=config.parse_flags_or_exit)


if __name__ == "__main__":
    run()
