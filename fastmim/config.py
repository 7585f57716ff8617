"""The run's configuration: nested dataclasses, resolved from a recipe, command-line flags and `--set`.

The `method` section is the dataclass of the method the recipe names (fastmim.methods.configs); config.yaml and
checkpoints record that name as the top-level `method_name`, which reading a configuration back uses to pick the
dataclass. Every value is checked against its field's declared type when it is set (fastmim.config_values), so a
choice outside a `Literal` field's values is refused before anything else happens."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import yaml

from fastmim.config_values import (ConfigValueError, choices, coerce, declared_type, field_types, matches_description,
                                   plain_number)
from fastmim.data_config import DataConfig, Pair
from fastmim.methods.configs import METHOD_CONFIGS, MaskAlignConfig, method_name


@dataclass
class OptimConfig:
    # adamw (torch's fused AdamW) / apex_adam / apex_lamb (NVIDIA apex, when installed)
    optimizer: Literal["adamw", "apex_adam", "apex_lamb"] = "adamw"
    base_lr: float = 1.5e-4           # scaled by global batch / 256
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: Pair = (0.9, 0.95)
    warmup_epochs: float = 20
    clip_grad: float | None = None    # max gradient norm, None for no clipping
    accum_steps: int = 1              # micro-batches per optimizer step (effective batch = batch × world × accum)


@dataclass
class TrainConfig:
    epochs: int = 200
    max_steps: int | None = None      # stop after this many optimizer steps; the schedule still follows epochs
    output: str = "runs/maskalign"
    init: str | None = None           # a checkpoint whose method weights a new run starts from (not its optimizer)
    resume: str = "auto"              # auto / never / a checkpoint path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    kernels: Literal["auto", "fused", "reference"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on the CPU
    compile: bool = False             # torch.compile the student and teacher blocks
    seed: int = 0
    log_every: int = 20               # steps between gathered losses / metric lines (the only host syncs)
    checkpoint_every: int = 1000      # steps between checkpoints (and one at the end)
    checkpoint_minutes: float | None = None  # also checkpoint when this many minutes passed since the last one
    keep_checkpoints: int = 2         # step-numbered checkpoints kept besides last.pt
    max_nonfinite: int = 20           # abort after this many non-finite losses in a row
    ema_decay: float | None = None    # keep an exponential moving average of the weights (timm's ModelEmaV3),
                                      # validated alongside and saved in checkpoints; None: none
    tensorboard: bool = False
    overwrite: bool = False           # with resume=never: clear a folder that holds a run before starting
    picture_every: int = 0            # steps between pictures of the method (DIR/pictures/step_N.png), and one at
                                      # the end of the schedule; 0: none
    picture_images: int = 4           # the images pictured: a fixed draw from the training data
    val_every_epochs: int = 1         # epochs between validations on data.val (and one at the end)


@dataclass
class EvalConfig:
    """The k-NN monitor: with `train` and `val` set (labelled ImageFolder trees), DINO's weighted k-NN of the
    student's features every `every` steps and at the end, on a fixed class-balanced subset (rank 0's share)."""
    train: str | None = None          # labelled images of the k-NN bank (class subfolders)
    val: str | None = None            # labelled query images, on the training set's classes
    every: int = 1000                 # steps between evaluations (and one at the end of the run)
    per_class: int = 50               # bank images per class (the first after a fixed shuffle)
    val_per_class: int = 50           # query images per class
    # CLS after the final norm / mean of the patch tokens; auto: the feature the method trains (its config's
    # feature_pooling: the mean for MaskDistill, whose loss never reads the CLS token)
    pooling: Literal["auto", "cls", "mean"] = "auto"
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


# How a run is started, not what it is: never written to config.yaml or a checkpoint, never read back from a
# file (a run's config.yaml given to --config must not clear or restart the run it came from).
LAUNCH_FIELDS = (("train", "resume"), ("train", "overwrite"))


def to_dict(cfg: Config) -> dict:
    data = {"method_name": method_name(cfg.method), **dataclasses.asdict(cfg)}
    for section, name in LAUNCH_FIELDS:
        data[section].pop(name)
    return data


def to_yaml(cfg, annotate: bool = False) -> str:
    """The configuration as YAML; with `annotate`, each field that takes a fixed set of values says which."""
    def plain(value):  # tuples → lists so that safe_load reads the file back
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    text = yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)
    return "".join(annotated_lines(cfg, text)) if annotate else text


def annotated_lines(cfg, text: str):
    """The lines of `to_yaml`'s text, a `# one of: …` comment after each field with choices."""
    section = None
    for line in text.splitlines(keepends=True):
        if not line.startswith(" ") and line.rstrip().endswith(":"):
            section = getattr(cfg, line.rstrip()[:-1], None)
        key, colon, value = line.strip().partition(":")
        is_field = line.startswith("  ") and not line.startswith("   ") and colon and value.strip()
        annotation = field_types(type(section)).get(key) if is_field and dataclasses.is_dataclass(section) else None
        allowed = choices(annotation)
        described = f"one of: {', '.join(map(str, allowed))}" if allowed else matches_description(annotation)
        yield f"{line.rstrip()}  # {described}\n" if described else line


def choice_fields() -> dict[str, str]:
    """{'method.loss': 'smooth_l1, l2, l1, cosine', …}: every field (of every method's section) that takes a fixed
    set of values or a pattern, with what it takes — for --help."""
    sections = {f.name: [f.type] for f in dataclasses.fields(Config)}
    sections["method"] = list(METHOD_CONFIGS.values())
    found = {}
    for section, classes in sections.items():
        for cls in classes:
            cls = cls if isinstance(cls, type) else field_types(Config)[section]
            for name, annotation in field_types(cls).items():
                allowed = choices(annotation)
                described = ", ".join(map(str, allowed)) if allowed else matches_description(annotation)
                if described:
                    found.setdefault(f"{section}.{name}", described)
    return found


# The image was once a method field too (method.img_size, method.data_mean, method.data_std): a file that still
# has them is read with them moved to the data section, or refused where the two disagreed.
LEGACY_IMAGE_FIELDS = {"img_size": "img_size", "data_mean": "mean", "data_std": "std"}


def move_legacy_image_fields(data: dict) -> dict:
    method, image = dict(data.get("method") or {}), dict(data.get("data") or {})
    for old, new in LEGACY_IMAGE_FIELDS.items():
        if old not in method:
            continue
        value = method.pop(old)
        if new in image and plain_list(image[new]) != plain_list(value):
            raise ConfigValueError(
                f"method.{old} ({value}) and data.{new} ({image[new]}) disagree; the image belongs to the data "
                f"section alone now: delete method.{old} and keep data.{new} at the value the images have")
        image.setdefault(new, value)
    return {**data, "method": method, "data": image} if "method" in data else data


def plain_list(value):
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def from_dict(data: dict) -> Config:
    data = move_legacy_image_fields(dict(data))
    name = data.pop("method_name", "maskalign")
    if name not in METHOD_CONFIGS:
        raise ValueError(f"unknown method_name {name!r}; known methods: {', '.join(METHOD_CONFIGS)}")
    cfg = Config(method=METHOD_CONFIGS[name]())
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigValueError(f"{section} must be a section (a mapping of fields), got {values!r}")
        for key, value in values.items():
            if (section, key) not in LAUNCH_FIELDS:  # an older fastmim wrote them: how that run was started
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
    "train.keep_checkpoints", "train.output", "train.tensorboard", "train.kernels", "train.compile",
    "train.max_nonfinite", "train.device", "train.picture_every", "train.picture_images",
    "train.val_every_epochs", "train.epochs",  # training longer: the schedule is recomputed for the new length from the step reached
    "data.workers", "data.pin_memory", "data.dali_hw_decoder_load", "data.dali_prefetch", "data.path",
    "method.attn_backend", "method.teacher_weights",
    "eval.",  # the monitor only reports: it may be added, changed or removed on resume
)

# (field, smallest value, the flag that sets it): checked before any work, so a bad value is a usage error
MINIMUMS = (
    ("train.epochs", 1, "--epochs"), ("train.max_steps", 1, "--max-steps"), ("train.log_every", 1, None),
    ("train.checkpoint_every", 1, None), ("train.keep_checkpoints", 0, None), ("train.max_nonfinite", 1, None),
    ("train.picture_every", 0, None), ("train.picture_images", 1, None), ("train.val_every_epochs", 1, None),
    ("optim.accum_steps", 1, None), ("data.batch_size", 1, "--batch-size"), ("data.workers", 0, None),
    ("data.img_size", 1, None), ("optim.warmup_epochs", 0, None), ("optim.min_lr", 0, None),
    ("eval.every", 1, None), ("eval.per_class", 1, None), ("eval.val_per_class", 1, None), ("eval.k", 1, None),
    ("eval.batch_size", 1, None), ("eval.workers", 0, None),
)
POSITIVE = (("optim.base_lr", None), ("optim.clip_grad", None), ("train.checkpoint_minutes", None),
            ("eval.temperature", None))


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
    check_shapes(cfg)
    if (cfg.eval.train is None) != (cfg.eval.val is None):
        given, missing = ("train", "val") if cfg.eval.val is None else ("val", "train")
        raise ConfigValueError(f"the k-NN monitor needs both eval.train and eval.val: eval.{given} is set, "
                               f"eval.{missing} is not (--eval-{missing} DIR)")


def check_shapes(cfg: Config) -> None:
    """What the fields say together, before anything is built: the image cut into whole patches, and a built-in
    synthetic set that holds at least one optimizer step."""
    size, patch = cfg.data.img_size, getattr(cfg.method, "patch_size", None)  # a classifier's is its model's
    if patch is not None and (patch < 1 or size % patch):
        raise ConfigValueError(f"data.img_size {size} is not a multiple of method.patch_size {patch}: the image "
                               "must cut into whole patches")
    needed = cfg.data.batch_size * cfg.optim.accum_steps
    synthetic = cfg.data.path is None or cfg.data.backend == "synthetic"
    if synthetic and cfg.data.synthetic_images < needed:
        raise ConfigValueError(f"data.synthetic_images={cfg.data.synthetic_images} is less than one step's images "
                               f"(--batch-size {cfg.data.batch_size} × optim.accum_steps {cfg.optim.accum_steps})")


def monitor_pooling(cfg: Config) -> str:
    """The k-NN monitor's feature: eval.pooling, or with auto the one the method trains."""
    return cfg.eval.pooling if cfg.eval.pooling != "auto" else cfg.method.feature_pooling
