"""The dry run's machinery: a method built at its real shapes with fake CUDA tensors for weights (nothing is
allocated), its training forward run under a `FakeTensorMode` that refuses real tensors, and a dispatch mode
(`HostGuard`) that refuses every tensor in host memory while the step runs.

Between them they raise on what would stall or break the step on a GPU:
- a data-dependent operation (`.item()`, `bool(tensor)`, `nonzero`, boolean indexing): the fake mode has no values
  to give (DataDependentOutputException, DynamicOutputShapeException);
- a tensor created without `device=` and then used with the step's tensors: a device mismatch in the fake mode;
- a host tensor in the step (`HostGuard`): a copy to the host (`.cpu()`, `.tolist()`) synchronizes, and so does a
  tensor built from a Python list on the device (`torch.tensor(list, device=…)` copies from pageable memory and
  waits for the stream); a CPU tensor that never meets a device tensor is work left on the wrong side. Only 0-dim
  tensors made from Python numbers pass (PyTorch hands them to device kernels by value).
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fastmim import ops
from fastmim.config import Config
from fastmim.methods import registry  # noqa: F401  (registers the built-in methods)
from fastmim.methods.base import METHODS, Method, MethodOutput
from fastmim.methods.configs import method_name
from fastmim.recipes import RECIPES, recipe

DEVICE = torch.device("cuda", 0)


class HostTensorError(RuntimeError):
    """An operator of the step read or made a tensor in host memory."""


class HostGuard(TorchDispatchMode):
    """Raises HostTensorError on an operator with a host tensor of one or more dimensions among its inputs or
    outputs, or with a host output made from device inputs (a copy to the host), unless `strict` is False; records
    the operators that ran (to tell the fused kernels from the references). A 0-dim host tensor made from a Python
    number passes: PyTorch hands it to device kernels by value (`x[:, 1:3] = -1`, `x * torch.tensor(2.0)`)."""

    def __init__(self, strict: bool = True):
        super().__init__()
        self.strict = strict
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func.overloadpacket))
        if self.strict:
            check_host_tensors(func, tensors((args, kwargs)), tensors(out))
        return out


def tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def check_host_tensors(func, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
    on_host = [t for t in inputs + outputs if t.device.type == "cpu" and t.dim() > 0]
    if on_host:
        shapes = ", ".join(str(list(t.shape)) for t in on_host)
        raise HostTensorError(f"{func}: a tensor in host memory in the step ({shapes}): create it on the device "
                              "(device=, not from a Python list, which is copied over and waits for the stream) "
                              "or make it a buffer of the module")
    if any(t.device.type == "cpu" for t in outputs) and any(t.device.type != "cpu" for t in inputs):
        raise HostTensorError(f"{func}: a copy from the device to the host in the step, which waits for the GPU")


def fake_mode() -> FakeTensorMode:
    """Real tensors are refused: everything the step touches must have come through the mode."""
    return FakeTensorMode(allow_non_fake_inputs=False)


def vit_b_config(name: str) -> Config:
    """Method `name` at ViT-B shapes with random teacher weights (no download): its first ViT-B recipe, or for a
    method that has none (the test-only toy) its demo recipe with the student made a ViT-B/16 on 224-px images."""
    for recipe_name in RECIPES:
        cfg = recipe(recipe_name)
        if method_name(cfg.method) == name and not recipe_name.startswith("demo") and is_vit_b(cfg.method):
            break
    else:
        cfg = recipe(next(r for r in RECIPES if r.startswith("demo") and method_name(recipe(r).method) == name))
        cfg.method.student, cfg.method.student_kwargs, cfg.method.patch_size = "base", {}, 16
        cfg.data.img_size, cfg.data.batch_size = 224, 128
    weights = getattr(cfg.method, "teacher_weights", None)
    if isinstance(weights, tuple):
        cfg.method.teacher_weights = ("random",) * len(weights)
    elif weights is not None:
        cfg.method.teacher_weights = "random"
    return cfg


def is_vit_b(method) -> bool:
    """A pretraining method's ViT-B student, or fine-tuning's ViT-B classifier."""
    return getattr(method, "student", None) == "base" or getattr(method, "model", None) == "vit_base_patch16_224"


CLASSES = tuple(f"class_{i}" for i in range(1000))  # a labelled method's ImageNet-sized head


def image_spec(cfg: Config):
    """The image spec the trainer hands the method: with the data's classes when the batches are labelled."""
    return dataclasses.replace(cfg.data.image, classes=CLASSES) if cfg.data.labels else cfg.data.image


def to_fake_cuda(modules, mode: FakeTensorMode) -> None:
    """Every parameter and buffer of `modules` replaced by a fake CUDA tensor of the same shape, strides, dtype and
    requires_grad."""
    def fake(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=DEVICE)

    with mode:
        for root in modules:
            for module in root.modules():
                for key, param in module._parameters.items():
                    if param is not None:
                        module._parameters[key] = nn.Parameter(fake(param), requires_grad=param.requires_grad)
                for key, buffer in module._buffers.items():
                    if buffer is not None:
                        module._buffers[key] = fake(buffer)


def build_fake(cfg: Config, mode: FakeTensorMode, precision: str = "bf16", method_class=None) -> Method:
    """The method as the trainer sets it up for a GPU (prepare: bf16 teachers, the GPU's attention backend), with
    fake CUDA weights. Built on the meta device first: nothing is allocated or initialized."""
    with torch.device("meta"):
        method = (method_class or METHODS[method_name(cfg.method)])(cfg.method, image_spec(cfg))
    method.prepare(torch.device("meta"), precision, compile=False)
    method.attention = method.set_attention_backend(cfg.method.attn_backend, DEVICE)  # chosen for the GPU
    to_fake_cuda([method, *method.teachers], mode)  # the teachers are held outside the module tree
    return method


@dataclass
class DryRun:
    method: Method
    images: torch.Tensor
    out: MethodOutput
    ops: set[str] = field(default_factory=set)  # the operators that ran

    @property
    def fastmim_ops(self) -> set[str]:
        return {name for name in self.ops if name.startswith("fastmim.")}


def dry_run(cfg: Config, kernels: str, precision: str = "bf16", method_class=None, guard: bool = True) -> DryRun:
    """`method(images)` (masks, teachers, student, heads or decoder, loss) on fake CUDA tensors at the config's
    shapes, with `kernels` ('fused' or 'reference'), under the HostGuard (`guard`: strict or only recording);
    `method_class` replaces the method's own class."""
    previous = ops.kernels_mode()
    ops.set_kernels(kernels)
    try:
        mode = fake_mode()
        method = build_fake(cfg, mode, precision, method_class)
        size = cfg.data.image.size
        with mode:
            images = torch.empty(cfg.data.batch_size, 3, size, size, device=DEVICE)  # the loaders' float32 batch
            batch = (images, torch.zeros(cfg.data.batch_size, dtype=torch.int64, device=DEVICE)) if cfg.data.labels \
                else images  # a labelled method's batch: (images, int64 labels)
            with HostGuard(strict=guard) as recorder:
                out = method(batch)
        return DryRun(method, images, out, recorder.ops)
    finally:
        ops.set_kernels(previous)


def check_output(run: DryRun) -> None:
    """What the step does with the output: a float32 scalar loss on the device that backward can start from, float32
    scalar terms summed on the device by the metrics, and a mask of int64 indices on the device."""
    loss, batch = run.out.loss, run.images.shape[0]
    assert (loss.device, loss.dtype, loss.shape, loss.requires_grad) == (DEVICE, torch.float32, (), True), loss
    assert run.out.terms
    for name, value in run.out.terms.items():
        assert (value.device, value.dtype, value.shape) == (DEVICE, torch.float32, ()), (name, value)
    mask = run.out.mask
    if mask is not None:
        for ids in (mask.ids_keep, mask.ids_masked):
            assert (ids.device, ids.dtype, ids.dim(), ids.shape[0]) == (DEVICE, torch.int64, 2, batch), ids
        assert mask.num_patches == run.method.student.num_patches
