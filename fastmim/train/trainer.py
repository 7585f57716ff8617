"""The trainer: composes the distributed set-up, the method, the data, the optimizer, checkpoints and
logging into the pretraining loop. It drives any method through fastmim.methods.base.Method alone (built by
the registry from the config's method section): never a method's class or name."""
from __future__ import annotations

import importlib.util
import signal
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from fastmim import ops
from fastmim.ops import _extension, selfcheck
from fastmim.config import Config, from_dict, to_dict, to_yaml
from fastmim.data import build_loader
from fastmim.methods.base import Method
from fastmim.methods.registry import build_method

from . import distributed as dist_utils
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .metrics import MetricsWriter, read_metrics
from .monitor import KnnMonitor, check_folders
from .optim import build_optimizer, set_lr
from .peak import peak_flops
from .precision import autocast_for, resolve_precision
from .progress import ProgressReporter
from .report import plot_loss_curve, print_summary, write_summary
from .resume_check import compare
from .run_folder import check_output, clear_run, holds_run
from .rng import get_rng_state, set_rng_state
from .schedule import learning_rate, peak_lr
from .step import StepStats, train_step


class NonFiniteLossError(RuntimeError):
    pass


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a step; last.pt holds it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """While active, SIGINT and SIGTERM only ask the loop to stop after the current step (the main thread's
    handlers; a second signal of the same kind gets the default behaviour back)."""

    def __init__(self):
        self.received: str | None = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


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
        self.nonfinite_seen = 0  # non-finite steps since this process started (read at logging points)
        self.changed_on_resume: list[str] = []
        self.last_knn: dict = {}  # the monitor's latest result (rank 0), for summary.json
        self.autocast = autocast_for(self.device, self.precision)
        self.flops_per_image = self.method.flops_per_image()
        self.peak_flops = peak_flops(self.device, self.precision)  # per device; None where unknown
        # Resolved and loaded here, before any work, so a bad --resume is reported like any other bad input.
        self.resume_path = resolve_resume(cfg.train.resume, self.output / "checkpoints")
        self.resumed_state = self.restore(self.resume_path) if self.resume_path else None

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
        return KnnMonitor(cfg.eval, cfg.data.img_size, cfg.data.mean, cfg.data.std, self.dist.rank,
                          self.dist.world_size)

    def _build_method(self) -> Method:
        torch.manual_seed(self.cfg.train.seed)  # identical teachers and initial student on every rank
        method = build_method(self.cfg.method).prepare(self.device, self.precision, self.cfg.train.compile)
        torch.manual_seed(self.cfg.train.seed + 1000 * self.dist.rank)  # masks and drop path differ per rank
        return method

    def _wrap(self, method):
        if self.dist.world_size == 1:
            return method
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(method, device_ids=ids)  # every trainable parameter is used: no search

    # --- checkpoints ------------------------------------------------------------------------------------
    def checkpoint_state(self, step: int, skipped: int, nonfinite: int) -> dict:
        return {
            "method_name": self.method.name,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "loaders": dist_utils.gather_objects(self.loader.state_dict()),
            "rng": dist_utils.gather_objects(get_rng_state(self.device)),
            "world_size": self.dist.world_size,
            "skipped_images": skipped,
            "nonfinite_steps": nonfinite,
            "config": to_dict(self.cfg),
        }

    def restore(self, path: Path) -> dict:
        state = load_checkpoint(path)
        saved = state.get("method_name")  # absent in checkpoints written before runs recorded their method
        if saved is not None and saved != self.method.name:
            raise ValueError(f"checkpoint {str(path)!r} was written by a {saved} run; this run trains "
                             f"{self.method.name} (use another --output, or --resume never)")
        self._check_same_run(path, state)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["world_size"] != self.dist.world_size:
            raise ValueError(f"checkpoint {str(path)!r} was written by {state['world_size']} processes; resuming "
                             f"with {self.dist.world_size} would change the data order (use the same count)")
        return state

    def _check_same_run(self, path: Path, state: dict) -> None:
        """The saved configuration against this one, before any weights are loaded."""
        if "config" not in state:
            return
        try:
            saved = to_dict(from_dict(state["config"]))  # the saved values, with today's defaults for new fields
        except ValueError:
            saved = state["config"]
        refused, accepted = compare(saved, to_dict(self.cfg))
        if refused:
            listing = "\n  ".join(refused)
            raise ValueError(f"--resume: {str(path)!r} was saved by a run with another configuration; these "
                             f"fields define the run and must match (saved → now):\n  {listing}\nuse the saved "
                             "values (its config.yaml: --config), another --output, or --resume never")
        self.changed_on_resume = accepted

    # --- the loop -----------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        resume_path, state = self.resume_path, self.resumed_state
        self.resumed_state = None  # the loop owns it now; do not keep a second copy of the weights alive
        step = state["step"] if state else 0
        if step >= self.stop_step:  # a finished run: say so and change nothing
            if main:
                print(f"the run in {self.output} is complete at step {step} of {self.stop_step}; nothing to do "
                      f"(--max-steps N up to {self.total_steps} continues its schedule)")
            dist_utils.teardown()
            return {"steps": step, "complete": True}
        if main:
            if self.clear_first:
                clear_run(self.output)
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.yaml").write_text(to_yaml(cfg))
        writer = MetricsWriter(self.output, step, cfg.train.tensorboard) if main else None
        progress = ProgressReporter(self.stop_step, step, enabled=main)
        for line in startup_lines(self, step):
            progress.log(line)
        try:
            with StopSignals() as signals:
                summary = self._loop(step, state, writer, progress, signals)
        finally:
            progress.close()
            if writer:
                writer.close()
        if summary.get("interrupted"):
            if main:
                print(f"stopped by {summary['interrupted']} at step {summary['steps']}: saved "
                      f"{self.output / 'checkpoints' / 'last.pt'}; run the same command again to resume")
            dist_utils.teardown()
            raise Interrupted(summary["interrupted"])
        if main:
            self._finish(summary)
        dist_utils.barrier()
        dist_utils.teardown()
        return summary

    def _epoch_iterator(self, epoch: int, step: int, state: dict | None):
        """The batches left in `epoch`, continuing the saved position and RNG when resuming. RNG states are put
        back where the uninterrupted run had them: before the epoch's iterator was made when the checkpoint
        fell on an epoch boundary, after it otherwise (making an iterator may draw from the global RNG)."""
        self.loader.set_epoch(epoch)
        mid_epoch = state is not None and step % self.steps_per_epoch != 0
        if state is not None and not mid_epoch:
            set_rng_state(state["rng"][self.dist.rank], self.device)
        if mid_epoch:
            self.loader.load_state_dict(state["loaders"][self.dist.rank])
        iterator = iter(self.loader)
        if mid_epoch:
            set_rng_state(state["rng"][self.dist.rank], self.device)
        return iterator

    def _next_micro_batches(self, iterator) -> list[torch.Tensor] | None:
        batches = []
        for _ in range(self.accum):
            images = next(iterator, None)
            if images is None:
                return None
            batches.append(images.to(self.device, non_blocking=True))
        return batches

    def _loop(self, step: int, state: dict | None, writer, progress, signals: StopSignals) -> dict:
        cfg = self.cfg.train
        skipped_before = state["skipped_images"] if state else 0
        nonfinite_before = state["nonfinite_steps"] if state else 0
        stats = StepStats.zeros(self.device)
        images_done, run_start = 0, time.perf_counter()
        window = {"start": time.perf_counter(), "wait": 0.0, "images": 0}
        last_loss, epoch = float("nan"), step // self.steps_per_epoch
        last_save, interrupted = time.monotonic(), None
        self.model.train()
        if self.monitor is not None:
            progress.log(self.monitor.describe())
        while step < self.stop_step and interrupted is None:
            epoch = step // self.steps_per_epoch
            iterator = self._epoch_iterator(epoch, step, state)
            state = None
            while step < self.stop_step and interrupted is None:
                fetch_start = time.perf_counter()
                micro = self._next_micro_batches(iterator)
                window["wait"] += time.perf_counter() - fetch_start
                if micro is None:
                    break  # epoch exhausted
                set_lr(self.optimizer, learning_rate(step, self.peak_lr, self.cfg.optim.min_lr,
                                                     self.warmup_steps, self.total_steps))
                train_step(self.model, self.optimizer, micro, self.autocast, self.cfg.optim.clip_grad, stats)
                step += 1
                batch_images = sum(m.shape[0] for m in micro)
                images_done += batch_images
                window["images"] += batch_images
                # An evaluation step is a logging step on every process (its result goes into that record).
                evaluating = self.cfg.eval.train is not None and (step % self.cfg.eval.every == 0
                                                                   or step == self.stop_step)
                logging = step % cfg.log_every == 0 or step == self.stop_step or evaluating
                if logging:
                    extra = self._evaluate(step, progress) if evaluating and self.monitor else {}
                    last_loss = self._log(step, epoch, stats, window, writer, progress,
                                          skipped_before, nonfinite_before, extra)
                    stats, window = stats.next_window(), {"start": time.perf_counter(), "wait": 0.0, "images": 0}
                # One process decides alone after every step; several agree at logging steps (a sync anyway).
                if self.dist.world_size == 1 or logging:
                    interrupted = self._agreed_signal(signals)
                    minutes = cfg.checkpoint_minutes
                    due = minutes is not None and self._agreed(time.monotonic() - last_save >= 60 * minutes)
                else:
                    due = False
                if step % cfg.checkpoint_every == 0 or step == self.stop_step or interrupted or due:
                    self._save(step, skipped_before, nonfinite_before)
                    last_save = time.monotonic()
        seconds = time.perf_counter() - run_start
        global_images = int(dist_utils.all_reduce_sum(torch.tensor(float(images_done))).item())
        return {
            "steps": step, "epochs": round(step / self.steps_per_epoch, 3), "images": global_images,
            "seconds": round(seconds, 3), "images_per_sec": global_images / seconds if seconds > 0 else 0.0,
            "final_loss": last_loss, "skipped_images": skipped_before + self._skipped(),
            "nonfinite_steps": nonfinite_before + self.nonfinite_seen, **self.last_knn, "interrupted": interrupted,
        }

    def _agreed(self, flag: bool) -> bool:
        """True when any process says so (processes stop and save together)."""
        if self.dist.world_size == 1:
            return flag
        return bool(dist_utils.all_reduce_sum(torch.tensor(float(flag), device=self.device)).item())

    def _agreed_signal(self, signals: StopSignals) -> str | None:
        if self.dist.world_size == 1:
            return signals.received
        return (signals.received or "SIGTERM") if self._agreed(signals.received is not None) else None

    def _skipped(self) -> int:
        return int(dist_utils.all_reduce_sum(torch.tensor(float(self.loader.skipped))).item())

    def _evaluate(self, step: int, progress) -> dict:
        """Rank 0's k-NN of the student now; its time is left out of the window's images/sec."""
        result = self.monitor.evaluate(self.method.student, self.device, self.autocast)
        progress.log(f"k-NN at step {step}: top-1 {result['knn_top1']:.2f} %, top-5 {result['knn_top5']:.2f} % "
                     f"({result['knn_seconds']:.1f} s)")
        self.last_knn = {key: result[key] for key in ("knn_top1", "knn_top5")}
        return result

    def _log(self, step, epoch, stats: StepStats, window, writer, progress, skipped_before, nonfinite_before,
             extra: dict):
        """The only host synchronization of the loop: gather the window's device-side sums (and the kernels'
        record of out-of-range indices on a GPU)."""
        ops.check_device_errors(self.device)
        sums = torch.stack([stats.loss_sum, stats.finite_steps, stats.nonfinite_total, stats.nonfinite_in_a_row])
        sums = dist_utils.all_reduce_sum(sums.float()).cpu()
        terms = dist_utils.all_reduce_sum(stats.term_sum.float()).cpu().tolist() if stats.term_sum is not None else []
        loss_sum, finite, nonfinite, in_a_row = sums.tolist()
        self.nonfinite_seen += int(nonfinite / self.dist.world_size)
        if in_a_row / self.dist.world_size >= self.cfg.train.max_nonfinite:
            raise NonFiniteLossError(
                f"the loss was not finite for {int(in_a_row / self.dist.world_size)} steps in a row (limit "
                f"train.max_nonfinite={self.cfg.train.max_nonfinite}) at step {step}; lower the learning rate, "
                "enable optim.clip_grad, or check the data")
        elapsed = time.perf_counter() - window["start"] - extra.get("knn_seconds", 0.0)
        loss = loss_sum / finite if finite else float("nan")
        images_per_sec = window["images"] * self.dist.world_size / elapsed if elapsed > 0 else 0.0
        record = {
            "step": step, "epoch": epoch, "loss": loss,
            **{name: value / finite if finite else float("nan") for name, value in zip(stats.term_names, terms)},
            "lr": self.optimizer.param_groups[0]["lr"], "images_per_sec": images_per_sec,
            "data_wait": window["wait"] / elapsed if elapsed > 0 else 0.0,
            "skipped_images": skipped_before + self._skipped(),
            "nonfinite_steps": nonfinite_before + self.nonfinite_seen,
        }
        if self.peak_flops:  # model FLOPs per second per device against the device's peak
            record["mfu"] = self.flops_per_image * images_per_sec / self.dist.world_size / self.peak_flops
        record.update(extra)
        if writer:
            writer.write(record)
        progress.update(record)
        return loss

    def _save(self, step, skipped_before, nonfinite_before):
        state = self.checkpoint_state(step, skipped_before + self._skipped(), nonfinite_before + self.nonfinite_seen)
        if self.dist.is_main:
            save_checkpoint(state, self.output / "checkpoints", step, self.cfg.train.keep_checkpoints)
        dist_utils.barrier()

    def _finish(self, summary: dict) -> None:
        summary.pop("interrupted", None)
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
    lines = [
        f"{t.method.name} on {t.device} × {t.dist.world_size} ({t.precision}), kernels {kernels} "
        f"(--kernels {cfg.train.kernels}), attention {getattr(t.method, 'attention', cfg.method.attn_backend)}",
        f"data: {images} (batch {cfg.data.batch_size} × {t.dist.world_size} processes × {t.accum} accumulation = "
        f"{t.global_batch}), {t.steps_per_epoch} steps per epoch",
        f"{trained / 1e6:.2f} M parameters trained; peak lr {t.peak_lr:.3g} (base {cfg.optim.base_lr:g} × "
        f"{t.global_batch}/256); steps {step} → {t.stop_step} of {t.total_steps}; output {t.output}",
    ]
    if step:
        lines.append(f"resumed from {t.resume_path} at step {step}")
    lines += [f"changed since the saved run: {change}" for change in t.changed_on_resume]
    if found is not None and found > used and (found - used) >= 0.1 * found:
        lines.append(f"warning: {found - used} of {found} images ({100 * (found - used) / found:.0f} %) are dropped "
                     "every epoch (each process takes whole batches only): lower --batch-size or add images")
    return lines
