"""facebookresearch/mae's models_mae.py forward, transcribed for the tests: random masking from given noise
(`randmask`), `forward_encoder`, `forward_decoder`, `forward_loss`, on the weights of a fastmim MAE. Every layer
is written out from its weights (conv patch embedding, timm's pre-norm block, LayerNorm, Linear), so nothing
of fastmim's own forward code is used."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm(x, norm):
    return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)


def block(x, blk):
    """timm's Block: x + attn(norm1(x)), then x + mlp(norm2(x)); attention softmax(q·kᵀ/√d)·v."""
    b, t, d = x.shape
    heads = blk.attn.num_heads
    qkv = F.linear(layer_norm(x, blk.norm1), blk.attn.qkv.weight, blk.attn.qkv.bias)
    q, k, v = qkv.reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, t, d), blk.attn.proj.weight, blk.attn.proj.bias)
    h = F.gelu(F.linear(layer_norm(x, blk.norm2), blk.mlp.fc1.weight, blk.mlp.fc1.bias))
    return x + F.linear(h, blk.mlp.fc2.weight, blk.mlp.fc2.bias)


def random_masking(x, noise, mask_ratio):
    n, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def forward_encoder(student, imgs, noise, mask_ratio):
    proj = student.patch_embed.proj
    x = F.conv2d(imgs, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)
    x = x + student.pos_embed[:, 1:, :]
    x, mask, ids_restore = random_masking(x, noise, mask_ratio)
    cls_token = student.cls_token + student.pos_embed[:, :1, :]
    x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    for blk in student.blocks:
        x = block(x, blk)
    return layer_norm(x, student.norm), mask, ids_restore


def forward_decoder(decoder, x, ids_restore):
    x = F.linear(x, decoder.embed.weight, decoder.embed.bias)
    mask_tokens = decoder.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + decoder.pos_embed
    for blk in decoder.blocks:
        x = block(x, blk)
    x = layer_norm(x, decoder.norm)
    x = F.linear(x, decoder.pred.weight, decoder.pred.bias)
    return x[:, 1:, :]


def patchify(imgs, p):
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))


def forward_loss(imgs, pred, mask, p, norm_pix_loss):
    target = patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.e-6)**.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def mae_forward(method, imgs, noise):
    """(loss, latent [B, 1+V, D] in the shuffled order, ids_shuffle) of models_mae.py's forward."""
    cfg = method.cfg
    latent, mask, ids_restore = forward_encoder(method.student, imgs, noise, cfg.mask_ratio)
    pred = forward_decoder(method.decoder, latent, ids_restore)
    return forward_loss(imgs, pred, mask, method.student.patch_size, cfg.norm_pix), latent, torch.argsort(noise, 1)
