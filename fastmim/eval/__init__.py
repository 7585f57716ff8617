"""What a pretrained student's features are worth: DINO's weighted k-NN (knn.py) and MAE's linear probe
(linear.py) on features extracted with the evaluation transform (features.py).

    features = extract(model, loader, pooling="cls")        # [N, D] on the model's device
    top1, top5 = knn_accuracy(train_f, train_y, val_f, val_y, k=20, temperature=0.07)
    result = linear_probe(train_f, train_y, val_f, val_y, LinearProbeConfig())
"""
from .features import eval_transform, extract
from .knn import knn_accuracy, knn_predict
from .linear import LinearProbeConfig, linear_probe

__all__ = ["eval_transform", "extract", "knn_accuracy", "knn_predict", "LinearProbeConfig", "linear_probe"]
