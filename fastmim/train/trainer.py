"""The trainer: composes the distributed set-up, the method, the data, the optimizer, checkpoints and
logging into the pretraining loop. It drives any method through fastmim.methods.base.Method alone (built by
the registry from the config's method section): never a method's class or name."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from fastmim import ops
from fastmim.checkpoint import (load_checkpoint, process_state, resolve_resume, save_best, save_checkpoint,
                                training_state)
from fastmim.config import Config, from_dict, monitor_pooling, to_dict, to_yaml
from fastmim.data import build_loader
from fastmim.data.labelled import validation_loader
from fastmim.methods.base import Method
from fastmim.methods.registry import build_method
from fastmim.ops import _extension, selfcheck

from . import distributed as dist_utils
from .metrics import Best, LoggingPlan, MetricsProcessor, MetricsWriter, NonFiniteLossError, Votes, read_metrics
from .monitor import KnnMonitor, MonitorEvaluator, check_folders
from .optim import build_optimizer, set_lr
from .peak import peak_flops
from .precision import autocast_for, resolve_precision
from .progress import ProgressReporter
from .report import plot_loss_curve, print_summary, write_summary
from .resume_check import compare
from .rng import get_rng_state, seed_all, set_rng_state
from .run_folder import check_output, clear_run, holds_run
from .schedule import learning_rate, peak_lr
from .signals import Interrupted, StopSignals
from .step import batch_size, to_device, train_step
from .validation import Validation

__all__ = ["Interrupted", "NonFiniteLossError", "Trainer"]


def check_kernels_on(device: torch.device, mode: str) -> None:
    """On a GPU, where the compiled kernels have not run before, compare each with its reference once
    (milliseconds): with kernels=auto a mismatch warns and the references are used, with fused it is an error."""
    if device.type != "cuda" or mode == "reference" or ops.fused_ops() is None or not _extension.runs_on(device):
        return
    problems = selfcheck.failures(selfcheck.check_ops(device))
    if not problems:
        return
    summary = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
    if mode == "fused":
        raise selfcheck.KernelMismatchError(f"--kernels fused: the fused kernels disagree with the references on "
                                            f"{device}: {summary}; run `python -m fastmim.doctor`")
    warnings.warn(f"the fused kernels disagree with the references on {device} ({summary}); training with the "
                  "references instead (run `python -m fastmim.doctor`)", RuntimeWarning, stacklevel=2)
    ops.set_kernels("reference")


@dataclass
class Resumed:
    """The checkpoint a run continues: where it is, what it holds, and the settings changed since it was saved."""
    path: Path
    state: dict | None
    changes: list[str] = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.output = Path(cfg.train.output)
        check_output(self.output)
        if cfg.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("train.tensorboard=true needs the 'tensorboard' package (pip install tensorboard)")
        self.clear_first = self._check_fresh_start(cfg)
        self.dist = dist_utils.setup(cfg.train.device)
        self.device = self.dist.device
        self.precision = resolve_precision(cfg.train.precision, self.device)
        ops.set_kernels(cfg.train.kernels)
        check_kernels_on(self.device, cfg.train.kernels)
        self.loader = build_loader(cfg.data, self.dist.rank, self.dist.world_size, self.device)
        self.monitor = self._build_monitor(cfg)
        self.method = self._build_method()
        self.model = self._wrap(self.method)
        self.ema = ModelEmaV3(self.method, decay=cfg.train.ema_decay) if cfg.train.ema_decay else None
        self.accum = cfg.optim.accum_steps
        self.steps_per_epoch = len(self.loader) // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"the data gives {len(self.loader)} batches per epoch per process, fewer than "
                             f"optim.accum_steps={self.accum}: lower --batch-size or use more images")
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, cfg.train.max_steps or self.total_steps)
        self.global_batch = cfg.data.batch_size * self.dist.world_size * self.accum
        self.peak_lr = peak_lr(cfg.optim.base_lr, self.global_batch)
        self.warmup_steps = int(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.optimizer = build_optimizer(cfg.optim.optimizer, self.method.param_groups(cfg.optim.weight_decay),
                                         self.peak_lr, cfg.optim.betas)
        self.autocast = autocast_for(self.device, self.precision)
        self.evaluators = self._evaluators()
        # Resolved and loaded here, before any work, so a bad --resume is reported like any other bad input.
        path = resolve_resume(cfg.train.resume, self.output / "checkpoints")
        self.resumed = self.restore(path) if path else None
        if cfg.train.init and not self.resumed:
            self.initialize(Path(cfg.train.init))

    # --- construction -------------------------------------------------------------------------------
    def _check_fresh_start(self, cfg: Config) -> bool:
        """--resume never into a folder holding a run: refused, unless train.overwrite (then cleared first)."""
        if cfg.train.resume != "never" or not holds_run(self.output):
            return False
        if not cfg.train.overwrite:
            raise ValueError(f"--resume never: {str(self.output)!r} holds a run; use another --output, resume it "
                             "(--resume auto), or add --set train.overwrite=true to clear it first")
        return True

    def _build_monitor(self, cfg: Config) -> KnnMonitor | None:
        """The k-NN monitor when eval.train and eval.val are set; built on rank 0, which alone evaluates."""
        if cfg.eval.train is None:
            return None
        check_folders(cfg.eval)
        if not self.dist.is_main:
            return None
        return KnnMonitor(cfg.eval, cfg.data.image, self.dist.rank, self.dist.world_size, monitor_pooling(cfg))

    def _build_method(self) -> Method:
        seed_all(self.cfg.train.seed)  # identical teachers and initial student on every rank
        image = dataclasses.replace(self.cfg.data.image, classes=tuple(self.loader.classes))
        method = build_method(self.cfg.method, image)
        method.prepare(self.device, self.precision, self.cfg.train.compile)
        seed_all(self.cfg.train.seed + 1000 * self.dist.rank)  # masks, mixup and drop path differ per rank
        return method

    def _evaluators(self) -> list:
        """What the loop evaluates now and then (metrics.Evaluator): the k-NN monitor, the validation set, the
        pictures."""
        cfg, evaluators = self.cfg, []
        if cfg.eval.train is not None:
            evaluators.append(MonitorEvaluator(self.monitor, cfg.eval.every, self.stop_step,
                                               lambda: self.method.student, self.device, self.autocast))
        if cfg.data.val is not None:
            if not self.method.supports_validation:
                raise ValueError(f"data.val: {self.method.name} has nothing to validate (a validation set is for a "
                                 "method that classifies, e.g. fine-tuning)")
            loader, images = validation_loader(cfg.data, self.loader.classes, self.dist.rank, self.dist.world_size,
                                               cfg.data.val_batch_size)
            evaluators.append(Validation(loader, images, self.method, self.ema,
                                         self.steps_per_epoch * cfg.train.val_every_epochs, self.stop_step,
                                         self.device, self.autocast))
        from .pictures import picture_evaluator  # train.picture_every: pictures of the method (rank 0 draws)

        pictures = picture_evaluator(cfg, self.method, self.output, self.total_steps, self.device, self.autocast,
                                     self.dist.is_main)
        if pictures is not None:
            evaluators.append(pictures)
        return evaluators

    def _wrap(self, method):
        if self.dist.world_size == 1:
            return method
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(method, device_ids=ids)  # every trainable parameter is used: no search

    # --- checkpoints ------------------------------------------------------------------------------------
    def restore(self, path: Path) -> Resumed:
        state = load_checkpoint(path)
        saved = state.get("method_name")  # absent in checkpoints written before runs recorded their method
        if saved is not None and saved != self.method.name:
            raise ValueError(f"checkpoint {str(path)!r} was written by a {saved} run; this run trains "
                             f"{self.method.name}: use another --output, or replace that run with --resume never "
                             "--set train.overwrite=true")
        changes = self._check_same_run(path, state)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        if state["world_size"] != self.dist.world_size:
            raise ValueError(f"checkpoint {str(path)!r} was written by {state['world_size']} processes; resuming "
                             f"with {self.dist.world_size} would change the data order (use the same count)")
        return Resumed(path, state, changes)

    def initialize(self, path: Path) -> None:
        """A new run that starts from another run's weights (--init): the method's state, not its optimizer,
        schedule or data position."""
        if not path.is_file():
            raise FileNotFoundError(f"--init {str(path)!r}: no such checkpoint file")
        state = load_checkpoint(path)
        if state.get("method_name", self.method.name) != self.method.name:
            raise ValueError(f"--init {str(path)!r} was written by a {state['method_name']} run; this run trains "
                             f"{self.method.name}")
        try:
            self.method.load_state_dict(state["method"])
        except RuntimeError as error:  # another architecture: name the first differences, not a traceback
            first = str(error).split("\n\t")[1:3]
            raise ValueError(f"--init {str(path)!r} does not fit this run's model: {'; '.join(first)}") from None

    def _check_same_run(self, path: Path, state: dict) -> list[str]:
        """The saved configuration against this one, before any weights are loaded: the accepted changes."""
        if "config" not in state:
            return []
        try:
            saved = to_dict(from_dict(state["config"]))  # the saved values, with today's defaults for new fields
        except ValueError:
            saved = state["config"]
        refused, accepted = compare(saved, to_dict(self.cfg))
        if refused:
            listing = "\n  ".join(refused)
            raise ValueError(f"--resume: {str(path)!r} was saved by a run with another configuration; these "
                             f"fields define the run and must match (saved → now):\n  {listing}\nuse the saved "
                             "values (its config.yaml: --config), another --output, or replace that run with "
                             "--resume never --set train.overwrite=true")
        return accepted

    def _save(self, step: int, metrics: MetricsProcessor, last: bool = True, best: bool = False) -> None:
        """last.pt (and step_N.pt), and/or best.pt when the step's evaluation is the best so far."""
        processes = dist_utils.gather_objects({"loader": self.loader.state_dict(), "rng": get_rng_state(self.device),
                                               "skipped": self.loader.skipped})
        totals = metrics.totals(sum(p.pop("skipped") for p in processes))
        name, kwargs = self.method.student_timm()
        extra = {"student_timm": {"model": name, "kwargs": kwargs}}
        if self.ema is not None:
            extra["ema"] = self.ema.module.state_dict()
        if metrics.best is not None:
            extra["best"] = {"value": metrics.best.value, "step": metrics.best.step}
        state = training_state(method_name=self.method.name, method=self.method.state_dict(),
                               optimizer=self.optimizer.state_dict(), step=step, processes=processes,
                               config=to_dict(self.cfg), **totals, **extra)
        if self.dist.is_main:
            folder = self.output / "checkpoints"
            if last:
                save_checkpoint(state, folder, step, self.cfg.train.keep_checkpoints)
            if best:
                save_best(state, folder)
        dist_utils.barrier()

    # --- the run ------------------------------------------------------------------------------------------
    def run(self, signals: StopSignals | None = None) -> dict:
        """Train to the stop step. `signals`: the caller's StopSignals when it took Ctrl-C over before building
        the trainer (a signal it received already stops the run before anything is written)."""
        with contextlib.nullcontext(signals) if signals is not None else StopSignals() as signals:
            if signals.received:
                dist_utils.teardown()
                raise Interrupted(signals.received, before_start=True)
            return self._run(signals)

    def _run(self, signals: StopSignals) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        state = self.resumed.state if self.resumed else None
        if self.resumed:
            self.resumed.state = None  # the loop owns it now; do not keep a second copy of the weights alive
        step = state["step"] if state else 0
        if step >= self.stop_step:  # a finished run: say so and change nothing
            if main:
                print(self._complete_message(step))
            dist_utils.teardown()
            return {"steps": step, "complete": True}
        if main:
            if self.clear_first:
                print(clear_run(self.output))
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.yaml").write_text(to_yaml(cfg))
        progress = ProgressReporter(self.stop_step, step, enabled=main)
        for line in startup_lines(self, step):
            progress.log(line)
        metrics = self._metrics(step, state, progress)
        try:
            step, stopped_by = self._train(step, state, metrics, signals)
        finally:
            progress.close()
            if metrics.writer:
                metrics.writer.close()
        if stopped_by:
            if main:
                print(f"stopped by {stopped_by} at step {step}: saved {self.output / 'checkpoints' / 'last.pt'}; "
                      "run the same command again to resume")
            dist_utils.teardown()
            raise Interrupted(stopped_by)
        summary = metrics.summary(step, self.steps_per_epoch, self.loader.skipped)
        if main:
            self._finish(summary)
        dist_utils.barrier()
        dist_utils.teardown()
        return summary

    def _complete_message(self, step: int) -> str:
        done = f"the run in {self.output} is complete at step {step} of {self.stop_step}; nothing to do"
        if self.stop_step < self.total_steps:
            return f"{done} (--max-steps N, up to {self.total_steps}, continues its schedule)"
        checkpoint = self.output / "checkpoints" / "last.pt"
        return (f"{done}. To train longer: --epochs N with N above {self.cfg.train.epochs} continues it along a "
                f"schedule of N epochs (the learning rate is recomputed for the new length), or start a new run "
                f"from its weights with --init {checkpoint} --output NEW_DIR")

    def _metrics(self, step: int, state: dict | None, progress: ProgressReporter) -> MetricsProcessor:
        cfg, main = self.cfg, self.dist.is_main
        if self.monitor is not None:
            progress.log(self.monitor.describe())
        plan = LoggingPlan(cfg.train.log_every, self.stop_step, self.evaluators)
        keys = [e.best_key for e in self.evaluators if getattr(e, "best_key", None)]
        best = Best(keys[0], **(state.get("best") or {})) if keys and state else Best(keys[0]) if keys else None
        return MetricsProcessor(
            plan=plan, world_size=self.dist.world_size, device=self.device,
            writer=MetricsWriter(self.output, step, cfg.train.tensorboard) if main else None, progress=progress,
            flops_per_image=self.method.flops_per_image(), peak_flops=peak_flops(self.device, self.precision),
            max_nonfinite=cfg.train.max_nonfinite, skipped_before=state["skipped_images"] if state else 0,
            nonfinite_before=state["nonfinite_steps"] if state else 0, best=best)

    def _epoch_batches(self, epoch: int, step: int, state: dict | None):
        """The batches left in `epoch`, continuing the saved position and RNG when resuming. RNG states are put
        back where the uninterrupted run had them: before the epoch's iterator was made when the checkpoint
        fell on an epoch boundary, after it otherwise (making an iterator may draw from the global RNG)."""
        self.loader.set_epoch(epoch)
        saved = process_state(state, self.dist.rank) if state is not None else None
        mid_epoch = saved is not None and step % self.steps_per_epoch != 0
        if saved is not None and not mid_epoch:
            set_rng_state(saved["rng"], self.device)
        if mid_epoch:
            self.loader.load_state_dict(saved["loader"])
        iterator = iter(self.loader)
        if mid_epoch:
            set_rng_state(saved["rng"], self.device)
        return iterator

    def _micro_batches(self, batches):
        """The epoch's batches in groups of optim.accum_steps, on the device (an incomplete last group is left).
        A batch is the images, or a tuple (images, labels, …) of tensors."""
        group = []
        for batch in batches:
            group.append(to_device(batch, self.device))
            if len(group) == self.accum:
                yield group
                group = []

    def _train(self, step: int, state: dict | None, metrics: MetricsProcessor,
               signals: StopSignals) -> tuple[int, str | None]:
        """fetch → lr → step → metrics → maybe save, from `step` until the stop step or a stop signal: (the step
        reached, the signal that stopped it or None)."""
        cfg = self.cfg.train
        last_save = time.monotonic()
        self.model.train()
        while step < self.stop_step:
            epoch = step // self.steps_per_epoch
            batches, state = self._epoch_batches(epoch, step, state), None
            for micro in self._micro_batches(metrics.timed(batches)):
                lr = learning_rate(step, self.peak_lr, self.cfg.optim.min_lr, self.warmup_steps, self.total_steps)
                set_lr(self.optimizer, lr)
                result = train_step(self.model, self.optimizer, micro, self.autocast, self.cfg.optim.clip_grad)
                if self.ema is not None:
                    self.ema.update(self.method, step)
                step += 1
                due = cfg.checkpoint_minutes is not None and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
                decision = metrics.after_step(step, epoch, lr, result, sum(batch_size(m) for m in micro),
                                              self.loader.skipped, Votes(signals.received, due))
                regular = step % cfg.checkpoint_every == 0 or step == self.stop_step
                if decision.stop or decision.checkpoint or regular or decision.best:
                    self._save(step, metrics, last=decision.stop or decision.checkpoint or regular,
                               best=decision.best)
                    last_save = time.monotonic()
                if decision.stop:
                    return step, decision.stop
                if step >= self.stop_step:
                    break
        return step, None

    def _finish(self, summary: dict) -> None:
        write_summary(self.output, summary)
        plot_loss_curve(self.output, read_metrics(self.output / "metrics.jsonl"))
        print_summary(summary)


def startup_lines(trainer: Trainer, step: int) -> list[str]:
    """What rank 0 prints before the first step: where, how, on what, and how much."""
    t, cfg = trainer, trainer.cfg
    if not t.dist.is_main:
        return []
    trained = sum(p.numel() for p in t.method.parameters() if p.requires_grad)
    found = getattr(t.loader, "num_images", None)
    used = len(t.loader) * cfg.data.batch_size * t.dist.world_size
    images = f"{found:,} images, {found - used:,} dropped per epoch" if found is not None else "images: unknown"
    kernels = "fused" if ops.kernels_mode() != "reference" and ops.fused_ops() is not None else "reference"
    backend = t.loader.backend + (" (--data-backend auto)" if cfg.data.backend == "auto" else "")
    workers = f"data workers: {t.loader.workers}" + (
        f" (data.workers={cfg.data.workers} lowered to the {t.loader.workers} cores available)"
        if t.loader.workers < cfg.data.workers else "")
    lines = [
        f"{t.method.name} on {t.device} × {t.dist.world_size} ({t.precision}), kernels {kernels} "
        f"(--kernels {cfg.train.kernels}), attention {getattr(t.method, 'attention', cfg.method.attn_backend)}",
        *t.method.describe(),
        f"data: {backend}, {images} (batch {cfg.data.batch_size} × {t.dist.world_size} processes × {t.accum} "
        f"accumulation = {t.global_batch}), {t.steps_per_epoch} steps per epoch",
        f"threads: {torch.get_num_threads()} for compute; {workers}",
        f"{trained / 1e6:.2f} M parameters trained; peak lr {t.peak_lr:.3g} (base {cfg.optim.base_lr:g} × "
        f"{t.global_batch}/256); steps {step} → {t.stop_step} of {t.total_steps}; output {t.output}",
    ]
    lines += t.method.warnings(on_real_images=t.loader.backend != "synthetic")
    if step:
        lines.append(f"resumed from {t.resumed.path} at step {step}")
        lines += [f"changed since the saved run: {change}" for change in t.resumed.changes]
    if found is not None and found > used and (found - used) >= 0.1 * found:
        lines.append(f"warning: {found - used} of {found} images ({100 * (found - used) / found:.0f} %) are dropped "
                     "every epoch (each process takes whole batches only): lower --batch-size or add images")
    return lines
