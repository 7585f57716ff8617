"""Teacher weights from timm's hub, failing fast without network: when the hub's host cannot be reached within a
few seconds, only the local cache is tried (huggingface_hub's offline mode), instead of huggingface_hub's minute
of retries; either way a failure says how to run offline."""
from __future__ import annotations

import contextlib
import os
import socket
from urllib.parse import urlparse

import timm


class TeacherWeightsError(ValueError):
    """The teacher's weights could not be obtained."""


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_hub():
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def create_from_hub(model_name: str, what: str, flag: str = "--teacher-weights", **kwargs):
    """timm.create_model(model_name, pretrained=True, **kwargs), or TeacherWeightsError with the way out (`flag`:
    the option of the command at hand that takes a local file instead)."""
    reachable = hub_reachable()
    try:
        with contextlib.nullcontext() if reachable else offline_hub():
            return timm.create_model(model_name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        why = "the hub cannot be reached and the weights are not in the local cache" if not reachable else str(error)
        raise TeacherWeightsError(
            f"{what}: could not get timm's pretrained weights for {model_name!r} ({why}). Without "
            f"network pass {flag} FILE (a .safetensors or .pth in timm, OpenAI CLIP or open_clip layout); "
            f"on a machine with network, `python -c \"import timm; timm.create_model('{model_name}', "
            "pretrained=True)\"` fills the cache (copy ~/.cache/huggingface over)") from error
