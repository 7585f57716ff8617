"""The run's configuration: nested dataclasses, resolved from a recipe, command-line flags and `--set`.

The `method` section is the dataclass of the method the recipe names (fastmim.methods.configs); config.yaml and
checkpoints record that name as the top-level `method_name`, which reading a configuration back uses to pick the
dataclass."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from fastmim.data.base import DataConfig
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
    keep_checkpoints: int = 2         # step-numbered checkpoints kept besides last.pt
    max_nonfinite: int = 20           # abort after this many non-finite losses in a row
    tensorboard: bool = False


@dataclass
class Config:
    method: object = field(default_factory=MaskAlignConfig)  # one of fastmim.methods.configs
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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
    """Set `section.field` (e.g. method.mask_ratio) to a value, converting lists to the tuples the config holds."""
    *path, name = dotted.split(".")
    target = cfg
    for part in path:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise KeyError(f"--set {dotted}: no config section {part!r}; sections: {section_names(cfg)}")
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
        fields = sorted(f.name for f in dataclasses.fields(target)) if dataclasses.is_dataclass(target) else []
        raise KeyError(f"--set {dotted}: unknown field {name!r}; known: {', '.join(fields) or section_names(cfg)}")
    current = getattr(target, name)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    setattr(target, name, value)


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
