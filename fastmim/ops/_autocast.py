"""Autocast for the fused ops whose references autocast through their matmuls: inside an autocast region the
floating inputs are cast to the region's dtype (read at call time, so bf16 and fp16 regions both work) and
the op runs with autocast off, as `torch.library.register_autocast` does for a fixed dtype."""
from __future__ import annotations

import torch

_libraries: dict = {}  # kept alive: registrations die with them


def register(library: str, name: str, device_types=("cpu", "cuda")) -> None:
    op = getattr(getattr(torch.ops, library), name).default
    if library not in _libraries:
        _libraries[library] = torch.library.Library(library, "IMPL")
    for device_type in device_types:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(keyset, *args, device_type=device_type, excluded=excluded):
            dtype = torch.get_autocast_dtype(device_type)
            cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                    and a.device.type == device_type else a for a in args]
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*cast)

        _libraries[library].impl(name, kernel, key, with_keyset=True)
