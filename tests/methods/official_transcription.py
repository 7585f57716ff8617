"""A direct transcription of the official MaskAlign loss, used only as the tests' yardstick: every teacher
level is normalized over all its tokens and then gathered, every level goes through a head, Dynamic
Alignment is a stacked einsum over all levels, and the per-level losses are summed with their weights
(zero weights included)."""
import torch
import torch.nn.functional as F

from fastmim.methods.maskalign import MaskAlign


def normalize_all_tokens(levels, kind):
    if kind == "layernorm":
        return F.layer_norm(levels, levels.shape[-1:], eps=1e-5)
    if kind == "l2":
        return F.normalize(levels, dim=-1)
    if kind == "batchnorm":
        flat = levels.flatten(1)
        mean, var = flat.mean(1), flat.var(1, unbiased=True)
        return (levels - mean[:, None, None, None]) / (var[:, None, None, None] + 1e-6).sqrt()
    return levels


def level_loss(pred, target, kind):
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0) * 2
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


def official_loss(method: MaskAlign, images, ids_keep, spare_heads):
    """spare_heads: callables used for the unsupervised levels (their loss weight is zero)."""
    cfg, teacher = method.cfg, method.teacher
    depth = teacher.depth
    all_levels = teacher(images, list(range(1, depth + 1)), importance=False).levels.clone()
    targets = normalize_all_tokens(all_levels.float(), cfg.target_norm)
    rows = torch.cat([torch.zeros_like(ids_keep[:, :1]), ids_keep + 1], dim=1)
    targets = targets[:, torch.arange(images.shape[0])[:, None], rows]  # gather after normalizing

    hidden = torch.stack(method.student(images, ids_keep))                # all S student levels
    if method.mix is None:
        mixed = [hidden[l] for l in range(depth)]
    else:
        mixed = list(torch.einsum("ts,sbnd->tbnd", method.mix, hidden))  # DA over every level

    total = 0.0
    for level in range(1, depth + 1):
        if level in method.levels:
            i = method.levels.index(level)
            if cfg.head == "linear":
                pred = F.linear(mixed[level - 1], method.head_weight[i], method.head_bias[i])
            else:
                pred = method.heads[i](mixed[level - 1])
        else:
            pred = spare_heads[level - 1](mixed[level - 1])
        weight = method.weights_by_level.get(level, 0.0)
        total = total + weight * level_loss(pred, targets[level - 1], cfg.loss)
    return total
