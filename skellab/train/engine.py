"""The training engine shared by every stage (learned skeleton, autoencoder, diffusion).

One loop, written once: a :class:`TrainingTask` says *what* to learn (model, batches,
loss, validation, the inference checkpoint); :func:`fit` does the rest —

* **deterministic data order**: :class:`StepSampler` turns ``(seed, step)`` into a global
  batch of dataset indices (per-epoch permutations, seeded like ``DistributedSampler``:
  ``randperm(n, generator=seed + epoch)``); under ``torchrun`` each of the N processes takes
  positions ``rank, rank + N, …`` of that global batch, so N processes × B/N samples see
  exactly the B samples one process sees (``DistributedSampler`` shards whole epochs and pads
  or drops a tail, so it cannot promise that; this is why it is not used here);
* **deterministic randomness**: before every step the torch RNG is re-seeded from
  ``(seed, step)``, and tasks draw per-sample randomness from ``(seed, epoch, index)`` or
  ``(seed, step)`` — never from a process-local stream — so a resumed run and a
  2-process run replay the same numbers;
* AdamW, linear warm-up then linear / cosine / constant LR, gradient clipping, optional EMA
  of the weights, bf16 autocast on CUDA (``amp="auto"``);
* tqdm progress, a CSV log (one row per step; validation columns when validated), and
  TensorBoard scalars when ``torch.utils.tensorboard`` can be imported;
* **checkpoints** (``<out>/checkpoint.pt``): the stage's inference checkpoint (same format
  as the shipped weights, so ``load_autoencoder(<out>/checkpoint.pt)`` works) plus a
  ``"train_state"`` entry — model (non-EMA) weights, optimizer, LR scheduler, EMA, RNG states,
  step, configs, data fingerprint — written atomically (temp file + fsync + rename) and
  readable with ``torch.load(weights_only=True)``. ``resume=True`` continues a killed run
  where its last checkpoint stopped and produces the same losses as an uninterrupted run;
  ``keep_every`` also keeps inference exports ``<out>/model_step{N}.pt`` of intermediate steps
  (an early snapshot is what autoguidance uses as its guide); it may change on resume;
* **DistributedDataParallel** when launched by ``torchrun`` (``WORLD_SIZE`` > 1): gloo on CPU,
  NCCL on CUDA, one device per local rank, losses all-reduced for the log, rank 0 alone
  validates, logs and writes files.

At the end the inference checkpoint (EMA weights when EMA is on) is exported to
``<out>/model.pt`` and a ``<out>/summary.json`` records the run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from ..checkpoint import read_checkpoint, save_bytes
from ..errors import SkellabError
from ..runtime import atomic_path
from .distributed import DistContext
from .logs import RunLog, read_log
from .sampling import StepSampler, derive_seed

__all__ = [
    "EngineConfig", "TrainingTask", "StepSampler", "DistContext", "FitResult", "fit", "read_log",
    "derive_seed", "TRAIN_STATE_VERSION", "StopTraining", "ema_update",
]

TRAIN_STATE_VERSION = 1
SCHEDULES = ("linear", "cosine", "constant")
AMP_MODES = ("auto", "bf16", "off")


class StopTraining(Exception):
    """Raise from a :func:`fit` callback to end training after the current step (e.g. a compute budget).

    Only for in-memory runs (``out=None``): the result holds the steps done, with the EMA weights.
    """


def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """One step of the exponential moving average of the weights, with the decay warmed up as
    ``min(decay, (1 + step) / (10 + step))`` (0-based ``step``)."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


@dataclass(frozen=True)
class EngineConfig:
    """Optimisation settings shared by every stage (``batch_size`` is the *global* batch)."""

    steps: int  # optimisation steps (the LR schedule's length)
    batch_size: int  # samples per step, summed over all processes
    lr: float  # peak learning rate
    warmup: int = 0  # linear warm-up steps
    schedule: str = "linear"  # after warm-up: "linear" / "cosine" decay to lr·lr_final_fraction, or "constant"
    lr_final_fraction: float = 0.01
    weight_decay: float = 0.0  # AdamW decoupled weight decay (0: Adam)
    grad_clip: float | None = 1.0  # max global gradient norm (None: no clipping)
    ema_decay: float | None = None  # EMA of the weights (exported instead of the raw weights)
    val_every: int = 0  # steps between validations (0: only at the end)
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    keep_every: int = 0  # steps between kept exports ``model_step{N}.pt`` (0: none), e.g. an autoguidance guide
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, none on CPU; "bf16"; "off"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise SkellabError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not self.lr > 0 or not 0 < self.lr_final_fraction <= 1:
            raise SkellabError("lr must be > 0 and lr_final_fraction in (0, 1]")
        if self.schedule not in SCHEDULES:
            raise SkellabError(f"unknown LR schedule {self.schedule!r}: use {', '.join(SCHEDULES)}")
        if self.amp not in AMP_MODES:
            raise SkellabError(f"unknown amp mode {self.amp!r}: use {', '.join(AMP_MODES)}")
        if self.warmup < 0 or self.val_every < 0 or self.checkpoint_every < 0 or self.keep_every < 0:
            raise SkellabError("warmup, val_every, checkpoint_every and keep_every must be >= 0")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise SkellabError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    def replace(self, **changes: Any) -> "EngineConfig":
        return replace(self, **changes)

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` for optimisation step ``step`` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        frac = min(1.0, (step - self.warmup) / max(self.steps - self.warmup, 1))
        floor = self.lr_final_fraction
        if self.schedule == "linear":
            return 1.0 - (1.0 - floor) * frac
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


class TrainingTask:
    """What one stage learns. Subclasses implement the methods below; :func:`fit` calls them.

    Randomness inside :meth:`make_batch` must come from ``(seed, epoch, index)`` of each item or
    from ``(seed, step)`` of the global batch (then select ``positions``), never from a
    process-local stream: that is what makes resumed and multi-process runs exact.
    """

    name: str = "task"
    checkpoint_format: str = ""
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step
    live_model: nn.Module | None = None  # set by :func:`fit` to the model it trains

    def config_dict(self) -> dict[str, Any]:
        """Everything that defines the model and its data pipeline (checked on resume)."""
        raise NotImplementedError

    def data_fingerprint(self) -> str:
        """A short string that changes when the training data change (checked on resume)."""
        raise NotImplementedError

    def num_items(self) -> int:
        raise NotImplementedError

    def prepare(self, out: Path | None, device: torch.device, dist: "DistContext", progress: bool) -> None:
        """One-off precomputation (caches); :func:`fit` runs it on rank 0 first, then on the others."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def make_batch(self, items: Sequence[tuple[int, int]], positions: Sequence[int], step: int,
                   device: torch.device) -> Any:
        """The local batch: ``items`` are (dataset index, epoch) pairs at ``positions`` of the global batch."""
        raise NotImplementedError

    def compute_loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Loss terms, means over the local batch; ``"total"`` is the one minimised."""
        raise NotImplementedError

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Validation numbers (logged with a ``val_`` prefix); ``{}`` when there is no validation data."""
        return {}

    def payload(self, model: nn.Module, *, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """The stage's inference checkpoint dict (with its ``"format"`` tag)."""
        raise NotImplementedError


class _LossModule(nn.Module):
    """``forward(batch) -> loss dict``: lets DistributedDataParallel see one forward per step."""

    def __init__(self, task: TrainingTask, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._task = task

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self._task.compute_loss(self.model, batch)


# ---------------------------------------------------------------------- checkpoint state
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gauss": float(np_state[4])},
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


BOOKKEEPING_FIELDS = ("keep_every",)  # engine fields that do not change the trained weights


def _trained_fields(engine: dict[str, Any]) -> dict[str, Any]:
    """An engine config without the fields a resumed run may change (what is kept, not what is trained)."""
    return {k: v for k, v in engine.items() if k not in BOOKKEEPING_FIELDS}


def _config_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}{k} ({a!r} in the checkpoint, {b!r} now)")
    return out


def _seed_step(seed: int, device: torch.device) -> None:
    """``torch.manual_seed`` without its per-call cost on CPU-only runs (it queues lazy CUDA/XPU
    seeding with a formatted stack trace each time): the CPU generator, plus CUDA when training there."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------------- the loop
@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (EMA copy if any, eval mode) and where things went."""

    model: nn.Module
    history: list[dict[str, Any]]
    step: int
    seconds: float
    out: Path | None = None
    resumed_from: int = 0

    @property
    def checkpoint(self) -> Path | None:
        return None if self.out is None else self.out / "checkpoint.pt"

    @property
    def model_path(self) -> Path | None:
        return None if self.out is None else self.out / "model.pt"

    @property
    def log_path(self) -> Path | None:
        return None if self.out is None else self.out / "log.csv"

    def column(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one log column, skipping steps where it was not recorded."""
        pts = [(r["step"], r[name]) for r in self.history if name in r and r[name] == r[name]]
        return [p[0] for p in pts], [float(p[1]) for p in pts]


def _stale_temps(out: Path) -> None:
    for p in out.glob(".checkpoint.pt.*.tmp.pt"):  # left behind by a process killed mid-write
        p.unlink(missing_ok=True)


def fit(
    task: TrainingTask,
    config: EngineConfig,
    *,
    out: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``task`` with ``config``; see the module docstring for what the engine does.

    out      : run folder of this stage (``checkpoint.pt``, ``model.pt``, ``log.csv``,
               ``summary.json``, caches); None: nothing is written
    resume   : continue from ``out/checkpoint.pt`` (configs and data must match; a missing
               checkpoint starts from step 0). Without it an existing checkpoint is an error.
    callback : ``callback(step, row)`` after each step on rank 0 (``row``: the logged numbers);
               it may raise to stop training early (the exception propagates).
    """
    run = Path(out) if out is not None else None
    dist_ctx = DistContext.from_env(device)
    dev = dist_ctx.device(device)
    try:  # the engine re-seeds torch's RNG every step: give the caller's RNG state back afterwards
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [], device_type=dev.type):
            return _fit(task, config, run, dist_ctx, device, resume, progress, callback)
    finally:
        dist_ctx.close()


def _fit(task, cfg: EngineConfig, run: Path | None, dctx: DistContext, device, resume, progress, callback) -> FitResult:
    dev = dctx.device(device)
    if dctx.active and dev.type == "cpu":  # share the cores between the processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", dctx.world))))
    ckpt_path = None if run is None else run / "checkpoint.pt"
    saved = None
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
        if ckpt_path.is_file():
            if not resume:
                raise SkellabError(f"{run} already holds a checkpoint: pass --resume (resume=True) to continue it, "
                                   f"or choose another output folder")
            saved = read_checkpoint(ckpt_path, format=task.checkpoint_format, kind=task.name)
            state = saved.get("train_state")
            if not isinstance(state, dict) or state.get("version") != TRAIN_STATE_VERSION:
                raise SkellabError(f"{ckpt_path}: has no resumable training state (an exported model, not a run checkpoint)")
            diff = _config_diff({"engine": _trained_fields(state.get("engine", {})), "task": state.get("task", {})},
                                {"engine": _trained_fields(asdict(cfg)), "task": task.config_dict()})
            if diff:
                raise SkellabError(f"{ckpt_path}: checkpoint/config mismatch: " + "; ".join(diff[:4])
                                   + (f"; … {len(diff) - 4} more" if len(diff) > 4 else ""))
            if state.get("data") != task.data_fingerprint():
                raise SkellabError(f"{ckpt_path}: the checkpoint was trained on other data (dataset fingerprint differs)")
        if dctx.is_main:
            _stale_temps(run)

    # one-off caches: rank 0 computes them, the other ranks then read them
    if dctx.is_main:
        task.prepare(run, dev, dctx, progress)
    dctx.barrier()
    if not dctx.is_main:
        task.prepare(run, dev, dctx, False)

    torch.manual_seed(cfg.seed)  # weight initialisation, identical on every rank
    model = task.build_model().to(dev)
    task.live_model = model  # the model being trained (callbacks may look at it)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay else None
    start = 0
    if saved is not None:
        st = saved["train_state"]
        try:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            if ema is not None:
                ema.load_state_dict(st["ema"])
            _set_rng_state(st["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise SkellabError(f"{ckpt_path}: training state does not fit this model ({exc.__class__.__name__})") from exc
        start = int(st["step"])
    elif resume and dctx.is_main and progress:
        print(f"{task.name}: no checkpoint in {run}; starting at step 0", file=sys.stderr)

    wrapped: nn.Module = _LossModule(task, model)
    if dctx.active:
        wrapped = DDP(wrapped, device_ids=[dev.index] if dev.type == "cuda" else None,
                      find_unused_parameters=task.find_unused_parameters)
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and dev.type == "cuda")
    autocast = (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    sampler = StepSampler(task.num_items(), cfg.batch_size, seed=cfg.seed, rank=dctx.rank, world=dctx.world)
    logs = RunLog(run, dctx.is_main, start)

    def save(step: int, metrics: dict[str, Any], keep: bool = False) -> None:
        export = ema if ema is not None else model
        payload = task.payload(export, step=step, metrics=metrics)
        if keep:  # the inference export of this step, beside the run's final model.pt
            with atomic_path(run / f"model_step{step}.pt") as tmp:
                save_bytes(payload, tmp)
        payload["train_state"] = {
            "version": TRAIN_STATE_VERSION, "step": step, "model": _cpu(model.state_dict()),
            "optimizer": _cpu(opt.state_dict()), "scheduler": sched.state_dict(),
            "ema": None if ema is None else _cpu(ema.state_dict()), "rng": _rng_state(),
            "engine": asdict(cfg), "task": task.config_dict(), "data": task.data_fingerprint(),
            "world_size": dctx.world, "cpu_seconds": metrics.get("cpu_seconds", 0.0),
        }
        with atomic_path(ckpt_path) as tmp:
            save_bytes(payload, tmp)

    t0, c0 = time.perf_counter(), time.process_time()
    seconds_before = float(logs.rows[-1]["seconds"]) if logs.rows else 0.0
    cpu_before = float(saved["train_state"].get("cpu_seconds", 0.0)) if saved is not None else 0.0

    def timing() -> dict[str, float]:  # cumulative over resumed segments (CPU: this process, rank 0)
        return {"wall_seconds": seconds_before + time.perf_counter() - t0,
                "cpu_seconds": cpu_before + time.process_time() - c0}
    last_val: dict[str, float] = {k: v for k, v in (logs.rows[-1] if logs.rows else {}).items()
                                  if k.startswith("val_") and v == v}
    bar = tqdm(range(start, cfg.steps), desc=task.name, disable=not (progress and dctx.is_main),
               initial=start, total=cfg.steps)
    model.train()
    stopped_at = None
    for step in bar:
        _seed_step(derive_seed(cfg.seed, "step", step), dev)  # dropout etc.: a function of the step alone
        items, positions = sampler.local_batch(step)
        batch = task.make_batch(items, positions, step, dev)
        with autocast():
            losses = wrapped(batch)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        grad_norm = float("nan")
        if cfg.grad_clip:
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        sched.step()
        if ema is not None:
            ema_update(ema, model, cfg.ema_decay, step)
        names = sorted(losses)
        values = dctx.mean([float(losses[k].detach().float()) for k in names], dev)
        row: dict[str, Any] = {"step": step + 1, "epoch": items[0][1] if items else 0,
                               **{("loss" if k == "total" else k): v for k, v in zip(names, values)},
                               "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                               "seconds": seconds_before + time.perf_counter() - t0}
        last = step + 1 == cfg.steps
        if (cfg.val_every and (step + 1) % cfg.val_every == 0) or last:
            if dctx.is_main:
                was = (ema if ema is not None else model)
                last_val = {f"val_{k}": float(v) for k, v in task.validate(was, dev).items()}
                model.train()
                row.update(last_val)
            dctx.barrier()
        if dctx.is_main:
            logs.write(row)
            if progress:
                bar.set_postfix(loss=f"{row['loss']:.4g}")
            if callback is not None:
                try:
                    callback(step, row)
                except StopTraining:
                    stopped_at = step + 1
        keep = run is not None and cfg.keep_every and (step + 1) % cfg.keep_every == 0
        if run is not None and (last or keep or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0)):
            if dctx.is_main:
                tail = [r["loss"] for r in logs.rows[-50:]]
                save(step + 1, {"train_loss": float(np.mean(tail)) if tail else None, **last_val, **timing()},
                     keep=bool(keep))
            dctx.barrier()
        if stopped_at is not None:
            break
    logs.close()
    final = ema if ema is not None else model
    final.eval()
    seconds = time.perf_counter() - t0
    result = FitResult(final, logs.rows, stopped_at or cfg.steps, seconds, run, start)
    if run is not None and dctx.is_main:
        tail = [r["loss"] for r in logs.rows[-50:]]
        metrics = {"train_loss": float(np.mean(tail)) if tail else None, **last_val, **timing()}
        if start == cfg.steps and saved is not None:  # nothing ran: keep the recorded times
            metrics.update({k: saved.get("metrics", {}).get(k, metrics[k]) for k in ("wall_seconds", "cpu_seconds")})
        if not (start == cfg.steps and (run / "model.pt").is_file()):  # a finished run keeps its export byte for byte
            export = task.payload(final, step=cfg.steps, metrics=metrics)
            with atomic_path(run / "model.pt") as tmp:
                save_bytes(export, tmp)
        summary = {"stage": task.name, "steps": cfg.steps, "resumed_from": start, "world_size": dctx.world,
                   "device": str(dev), "bf16": use_bf16, "seconds_this_process": seconds,
                   "seconds_total": float(logs.rows[-1]["seconds"]) if logs.rows else seconds,
                   "metrics": metrics, "engine": asdict(cfg), "task": task.config_dict(),
                   "data": task.data_fingerprint(), "torch": torch.__version__}
        with atomic_path(run / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return result

