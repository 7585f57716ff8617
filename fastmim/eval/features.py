"""Features of a student for evaluation: the evaluation transform (resize to size / 0.875, centre crop, the
data's normalization: 256 → 224 at 224 px), and one pass over a labelled loader in eval mode, no grad, keeping
the CLS token after the final norm (`cls`) or the mean of the patch tokens after it (`mean`)."""
from __future__ import annotations

import torch
import torch.nn as nn

POOLINGS = ("cls", "mean")
POOLING_WORDS = {"cls": "the CLS token after the final norm", "mean": "the mean of the patch tokens"}


def eval_transform(img_size: int, mean, std, crop: float = 0.875):
    """Resize the short side to img_size / crop (bicubic), centre crop img_size, normalize."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(round(img_size / crop)), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size), transforms.ToTensor(), transforms.Normalize(mean, std)])


def tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[B, prefix + N, D] after the final norm: fastmim's student (encode) or a timm ViT (forward_features)."""
    if hasattr(model, "encode"):
        return model.encode(images)
    return model.forward_features(images)


def pool(x: torch.Tensor, pooling: str, prefix: int = 1) -> torch.Tensor:
    if pooling == "cls":
        return x[:, 0]
    if pooling == "mean":
        return x[:, prefix:].mean(dim=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


@torch.no_grad()
def extract(model: nn.Module, loader, pooling: str = "cls", device=None, progress=None) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """(features [N, D] float32, labels [N]) of every (images, labels) batch of `loader`, on the CPU."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    prefix = getattr(model, "num_prefix_tokens", 1)
    features, labels = [], []
    try:
        for images, targets in loader:
            features.append(pool(tokens(model, images.to(device)), pooling, prefix).float().cpu())
            labels.append(torch.as_tensor(targets).long())
            if progress is not None:
                progress(len(targets))
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("the evaluation loader gave no images")
    return torch.cat(features), torch.cat(labels)
