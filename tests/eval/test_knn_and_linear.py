"""fastmim.eval: the k-NN against a direct transcription of DINO's eval_knn.py vote (random features, fewer than
100 queries, non-contiguous labels, chunking), and the linear probe: separable features reach ≥ 95 %, and its
first steps equal a plain-PyTorch transcription of MAE's protocol (BatchNorm without affine + Linear, LARS,
per-iteration warmup)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from fastmim.eval import LinearProbeConfig, knn_accuracy, linear_probe
from fastmim.eval.linear import train_probe


def dino_knn(train_features, train_labels, test_features, test_labels, k, T, num_classes):
    """facebookresearch/dino eval_knn.py's knn_classifier, transcribed (chunks of max(1, N // 100) queries so that
    fewer than 100 queries run)."""
    train_features = nn.functional.normalize(train_features, dim=1).t()
    test_features = nn.functional.normalize(test_features, dim=1)
    top1, top5, total = 0.0, 0.0, 0
    num_test = test_labels.shape[0]
    per_chunk = max(1, num_test // 100)
    retrieval_one_hot = torch.zeros(k, num_classes)
    for idx in range(0, num_test, per_chunk):
        features = test_features[idx:min(idx + per_chunk, num_test)]
        targets = test_labels[idx:min(idx + per_chunk, num_test)]
        batch = targets.shape[0]
        similarity = torch.mm(features, train_features)
        distances, indices = similarity.topk(k, largest=True, sorted=True)
        candidates = train_labels.view(1, -1).expand(batch, -1)
        neighbors = torch.gather(candidates, 1, indices)
        retrieval_one_hot.resize_(batch * k, num_classes).zero_()
        retrieval_one_hot.scatter_(1, neighbors.view(-1, 1), 1)
        weights = distances.clone().div_(T).exp_()
        probs = torch.sum(torch.mul(retrieval_one_hot.view(batch, -1, num_classes), weights.view(batch, -1, 1)), 1)
        _, predictions = probs.sort(1, True)
        correct = predictions.eq(targets.view(-1, 1))
        top1 += correct.narrow(1, 0, 1).sum().item()
        top5 += correct.narrow(1, 0, min(5, k)).sum().item()
        total += batch
    return top1 * 100.0 / total, top5 * 100.0 / total


@pytest.mark.parametrize("queries, labels, chunk", [(37, (3, 7, 11, 12, 40), 1024), (250, tuple(range(10)), 64),
                                                    (5, (0, 2, 9), 2)])
def test_knn_equals_dinos_vote(queries, labels, chunk):
    g = torch.Generator().manual_seed(queries)
    label_set = torch.tensor(labels)
    centres = torch.randn(len(labels), 16, generator=g)
    train_y = label_set[torch.randint(len(labels), (300,), generator=g)]
    val_y = label_set[torch.randint(len(labels), (queries,), generator=g)]
    to_centre = {v: i for i, v in enumerate(labels)}
    noisy = lambda y: centres[[to_centre[int(v)] for v in y]] + 1.5 * torch.randn(len(y), 16, generator=g)  # noqa: E731
    train_f, val_f = noisy(train_y), noisy(val_y)
    ours = knn_accuracy(train_f, train_y, val_f, val_y, k=20, temperature=0.07, chunk=chunk)
    theirs = dino_knn(train_f, train_y, val_f, val_y, 20, 0.07, int(train_y.max()) + 1)
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert 0 < ours[0] < 100 and ours[1] >= ours[0]


def test_knn_errors_are_named():
    with pytest.raises(ValueError, match="at least one query"):
        knn_accuracy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(0, 3), torch.zeros(0))


def separable(n: int, classes: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(classes, dim, generator=g) * 3
    labels = torch.randint(classes, (n,), generator=g)
    return directions[labels] + torch.randn(n, dim, generator=g) + 5.0, labels  # offset: BatchNorm must centre


@pytest.mark.parametrize("optimizer, base_lr", [("lars", 1.0), ("sgd", 0.1)])
def test_linear_probe_separates_separable_features(optimizer, base_lr):
    """LARS steps are relative to the weights' norm: at batch 256 its lr (base × 256/256) must be larger than at
    MAE's batch of 16,384 (base 0.1 → lr 6.4)."""
    features, labels = separable(2500, 10, 32, 0)
    cfg = LinearProbeConfig(epochs=30, batch_size=256, warmup_epochs=3, optimizer=optimizer, base_lr=base_lr)
    result = linear_probe(features[:2000], labels[:2000], features[2000:], labels[2000:], cfg)
    assert result["top1"] >= 95, result


def test_the_first_steps_equal_maes_protocol_transcribed():
    train_f, train_y = separable(512, 5, 12, 1)
    cfg = LinearProbeConfig(epochs=4, batch_size=128, warmup_epochs=2, base_lr=0.1, weight_decay=0.05)
    ours = train_probe(train_f, train_y, 5, cfg, steps=6)

    torch.manual_seed(cfg.seed)  # the transcription: MAE's head, LARS and lr schedule written out
    bn, linear = nn.BatchNorm1d(12, affine=False, eps=1e-6), nn.Linear(12, 5)
    nn.init.normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    momentum = {id(p): torch.zeros_like(p) for p in linear.parameters()}
    generator = torch.Generator().manual_seed(cfg.seed)
    peak, per_epoch, done = 0.1 * 128 / 256, 512 // 128, 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(512, generator=generator)
        for i in range(per_epoch):
            if done == 6:
                break
            it = epoch + i / per_epoch
            lr = peak * it / 2 if it < 2 else 0.5 * peak * (1 + math.cos(math.pi * (it - 2) / 2))
            rows = order[i * 128:(i + 1) * 128]
            loss = nn.functional.cross_entropy(linear(bn(train_f[rows])), train_y[rows])
            grads = torch.autograd.grad(loss, list(linear.parameters()))
            with torch.no_grad():
                for p, g in zip(linear.parameters(), grads):
                    if p.ndim > 1:
                        g = g + 0.05 * p
                        g = g * (0.001 * p.norm() / g.norm())
                    momentum[id(p)] = 0.9 * momentum[id(p)] + g
                    p -= lr * momentum[id(p)]
            done += 1
    torch.testing.assert_close(ours[1].weight, linear.weight, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours[1].bias, linear.bias, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours[0].running_mean, bn.running_mean)
