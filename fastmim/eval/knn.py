"""DINO's weighted k-NN classifier (facebookresearch/dino eval_knn.py): features L2-normalized; each query's k
most cosine-similar training features vote for their labels with weight exp(similarity / T); classes are
ranked by their summed votes. Queries run in chunks of `chunk` against all training features, so memory stays
at chunk × N_train similarities for any number of queries (DINO's own split into 100 chunks fails below 100
queries)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Classes ranked per query [Q, C] (best first), C = num_classes or max label + 1."""
    if train_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one training feature")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, train_features.shape[0])
    classes = int(num_classes if num_classes is not None else train_labels.max().item() + 1)
    bank = F.normalize(train_features.float(), dim=1).t()
    labels = train_labels.to(bank.device).long()
    ranked = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start:start + chunk].float().to(bank.device), dim=1)
        similarity, indices = (q @ bank).topk(k, dim=1, largest=True, sorted=True)
        votes = torch.zeros(q.shape[0], k, classes, device=bank.device)
        votes.scatter_(2, labels[indices][..., None], 1.0)
        scores = (votes * (similarity / temperature).exp()[..., None]).sum(dim=1)
        ranked.append(scores.sort(dim=1, descending=True).indices)
    return torch.cat(ranked) if ranked else torch.empty(0, classes, dtype=torch.long)


def knn_accuracy(train_features, train_labels, queries, query_labels, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024) -> tuple[float, float]:
    """(top-1, top-5) accuracy in percent of the weighted k-NN vote."""
    if queries.shape[0] == 0:
        raise ValueError("k-NN needs at least one query")
    ranked = knn_predict(train_features, train_labels, queries, k, temperature, None, chunk)
    correct = ranked == query_labels.to(ranked.device).long()[:, None]
    n = correct.shape[0]
    return (correct[:, :1].any(dim=1).sum().item() * 100.0 / n,
            correct[:, :min(5, k)].any(dim=1).sum().item() * 100.0 / n)
