"""The run's configuration: nested dataclasses, resolved from a recipe, command-line flags and `--set`.

The `method` section is the dataclass of the method the recipe names (fastmim.methods.configs); config.yaml and
checkpoints record that name as the top-level `method_name`, which reading a configuration back uses to pick the
dataclass."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from fastmim.config_values import ConfigValueError, coerce, declared_type, plain_number
from fastmim.data_config import DataConfig
from fastmim.methods.configs import METHOD_CONFIGS, MaskAlignConfig, method_name


@dataclass
class OptimConfig:
    optimizer: str = "adamw"          # adamw (torch fused) / apex_adam / apex_lamb (NVIDIA apex, if installed)
    base_lr: float = 1.5e-4           # scaled by global batch / 256
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    warmup_epochs: float = 20
    clip_grad: float | None = None    # max gradient norm, None for no clipping
    accum_steps: int = 1              # micro-batches per optimizer step (effective batch = batch × world × accum)


@dataclass
class TrainConfig:
    epochs: int = 200
    max_steps: int | None = None      # stop after this many optimizer steps; the schedule still follows epochs
    output: str = "runs/maskalign"
    resume: str = "auto"              # auto / never / a checkpoint path
    device: str = "auto"              # auto / cpu / cuda
    kernels: str = "auto"             # auto / fused / reference
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on the CPU) / bf16 / fp32
    compile: bool = False             # torch.compile the student and teacher blocks
    seed: int = 0
    log_every: int = 20               # steps between gathered losses / metric lines (the only host syncs)
    checkpoint_every: int = 1000      # steps between checkpoints (and one at the end)
    checkpoint_minutes: float | None = None  # also checkpoint when this many minutes passed since the last one
    keep_checkpoints: int = 2         # step-numbered checkpoints kept besides last.pt
    max_nonfinite: int = 20           # abort after this many non-finite losses in a row
    tensorboard: bool = False
    overwrite: bool = False           # with resume=never: clear a folder that holds a run before starting


@dataclass
class EvalConfig:
    """The k-NN monitor: with `train` and `val` set (labelled ImageFolder trees), DINO's weighted k-NN of the
    student's features every `every` steps and at the end, on a fixed class-balanced subset (rank 0's share)."""
    train: str | None = None          # labelled images of the k-NN bank (class subfolders)
    val: str | None = None            # labelled query images, on the training set's classes
    every: int = 1000                 # steps between evaluations (and one at the end of the run)
    per_class: int = 50               # bank images per class (the first after a fixed shuffle)
    val_per_class: int = 50           # query images per class
    pooling: str = "cls"              # cls (after the final norm) / mean (of the patch tokens)
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256             # images per feature-extraction batch
    workers: int = 4                  # DataLoader workers for the evaluation images


@dataclass
class Config:
    method: object = field(default_factory=MaskAlignConfig)  # one of fastmim.methods.configs
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def to_dict(cfg: Config) -> dict:
    return {"method_name": method_name(cfg.method), **dataclasses.asdict(cfg)}


def to_yaml(cfg) -> str:
    def plain(value):  # tuples → lists so that safe_load reads the file back
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)


def from_dict(data: dict) -> Config:
    data = dict(data)
    name = data.pop("method_name", "maskalign")
    if name not in METHOD_CONFIGS:
        raise ValueError(f"unknown method_name {name!r}; known methods: {', '.join(METHOD_CONFIGS)}")
    cfg = Config(method=METHOD_CONFIGS[name]())
    for section, values in data.items():
        for key, value in values.items():
            set_field(cfg, f"{section}.{key}", value)
    return cfg


def set_field(cfg, dotted: str, value) -> None:
    """Set `section.field` (e.g. method.mask_ratio), or a key inside a dict field (method.student_kwargs.depth),
    to `value` converted to the field's declared type (ConfigValueError naming the field otherwise)."""
    *path, name = dotted.split(".")
    target, walked = cfg, []
    for part in path:
        if isinstance(target, dict):  # a key path inside a dict field: create what is missing
            target = target.setdefault(part, {})
        elif dataclasses.is_dataclass(target) and part in {f.name for f in dataclasses.fields(target)}:
            target = getattr(target, part)
        else:
            raise ConfigValueError(unknown(cfg, target, walked, part))
        walked.append(part)
        if not isinstance(target, dict) and not dataclasses.is_dataclass(target):
            raise ConfigValueError(f"{'.'.join(walked)} is a value, not a section: there is no {dotted}")
    if isinstance(target, dict):
        target[name] = plain_number(value)
        return
    if name not in {f.name for f in dataclasses.fields(target)}:
        raise ConfigValueError(unknown(cfg, target, walked, name))
    setattr(target, name, coerce(value, declared_type(target, name), dotted))


def unknown(cfg, target, walked: list[str], name: str) -> str:
    where = ".".join(walked) or "the configuration"
    if dataclasses.is_dataclass(target):
        known = ", ".join(sorted(f.name for f in dataclasses.fields(target)))
    else:
        known = section_names(cfg)
    return f"unknown field {name!r} in {where}; known: {known}"


def section_names(cfg) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cfg))


def parse_assignment(text: str) -> tuple[str, object]:
    """`key=value` with the value read as YAML: 0.75, true, null, [0.2, 1.0], {depth: 4}, or a plain string."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value (e.g. method.mask_ratio=0.75), got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as error:
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({error})") from error


# Dotted names of the fields a resumed run may change (how it is run and reported); every other field defines
# the run and must match its checkpoint (fastmim.train.resume_check).
MAY_CHANGE_ON_RESUME = (
    "train.max_steps", "train.log_every", "train.checkpoint_every", "train.checkpoint_minutes",
    "train.keep_checkpoints", "train.output", "train.tensorboard", "train.resume", "train.overwrite",
    "train.kernels", "train.compile", "train.max_nonfinite", "train.device",
    "data.workers", "data.pin_memory", "data.dali_hw_decoder_load", "data.dali_prefetch", "data.path",
    "method.attn_backend", "method.teacher_weights",
    "eval.",  # the monitor only reports: it may be added, changed or removed on resume
)

# (field, smallest value, the flag that sets it): checked before any work, so a bad value is a usage error
MINIMUMS = (
    ("train.epochs", 1, "--epochs"), ("train.max_steps", 1, "--max-steps"), ("train.log_every", 1, None),
    ("train.checkpoint_every", 1, None), ("train.keep_checkpoints", 0, None), ("train.max_nonfinite", 1, None),
    ("optim.accum_steps", 1, None), ("data.batch_size", 1, "--batch-size"), ("data.workers", 0, None),
    ("data.img_size", 1, None), ("optim.warmup_epochs", 0, None), ("optim.min_lr", 0, None),
    ("eval.every", 1, None), ("eval.per_class", 1, None), ("eval.val_per_class", 1, None), ("eval.k", 1, None),
    ("eval.batch_size", 1, None), ("eval.workers", 0, None),
)
POSITIVE = (("optim.base_lr", None), ("optim.clip_grad", None), ("train.checkpoint_minutes", None),
            ("eval.temperature", None))
CHOICES = {"train.device": ("auto", "cpu", "cuda"), "train.kernels": ("auto", "fused", "reference"),
           "train.precision": ("auto", "bf16", "fp32"), "eval.pooling": ("cls", "mean")}


def get_field(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_config(cfg: Config) -> None:
    """Value ranges the types cannot say (ConfigValueError naming the field and its flag)."""
    def name(dotted, flag):
        return f"{flag} ({dotted})" if flag else dotted

    for dotted, least, flag in MINIMUMS:
        value = get_field(cfg, dotted)
        if value is not None and value < least:
            raise ConfigValueError(f"{name(dotted, flag)} must be at least {least}, got {value}")
    for dotted, flag in POSITIVE:
        value = get_field(cfg, dotted)
        if value is not None and not value > 0:
            raise ConfigValueError(f"{name(dotted, flag)} must be positive, got {value}")
    for dotted, choices in CHOICES.items():
        if get_field(cfg, dotted) not in choices:
            raise ConfigValueError(f"{dotted} must be one of {', '.join(choices)}, got {get_field(cfg, dotted)!r}")
    if (cfg.eval.train is None) != (cfg.eval.val is None):
        given, missing = ("train", "val") if cfg.eval.val is None else ("val", "train")
        raise ConfigValueError(f"the k-NN monitor needs both eval.train and eval.val: eval.{given} is set, "
                               f"eval.{missing} is not (--eval-{missing} DIR)")
