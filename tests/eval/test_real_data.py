"""Pretraining learns on real images (tests/eval/real_data.py has the protocol): on scikit-learn's digits, a
randomly initialized student is at least 15 points of k-NN top-1 below the supervised teacher, and MaskAlign,
MR-MAE and MaskDistill pretraining (through `python -m fastmim.pretrain` and its k-NN monitor) each close at
least half of that gap. MAE's figure is measured and printed; it has no teacher to close a gap to."""
from __future__ import annotations

import pytest

from .real_data import PRETRAIN, knn_of, pretrained_knn, random_student, teacher_model, train_teacher, write_data


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_data")
    data = write_data(root / "digits")
    weights = train_teacher(data["pool_x"], data["pool_y"], root / "teacher.safetensors")
    return data, weights, knn_of(teacher_model(weights), data)


def floor(method: str, data: dict) -> float:
    """The randomly initialized student's k-NN, on the feature the method's k-NN reads."""
    return knn_of(random_student(method), data, PRETRAIN[method][2])


def test_a_random_student_is_at_least_15_points_below_the_teacher(protocol):
    data, _, teacher = protocol
    for method in ("maskalign", "mrmae", "maskdistill", "mae"):
        random_top1 = floor(method, data)
        print(f"teacher {teacher:.2f} %, random {method} student {random_top1:.2f} %")
        assert teacher - random_top1 >= 15, (method, teacher, random_top1)


@pytest.mark.parametrize("method", ["maskalign", "mrmae", "maskdistill"])
def test_pretraining_closes_at_least_half_the_gap_to_the_teacher(protocol, method, tmp_path):
    data, weights, teacher = protocol
    random_top1 = floor(method, data)
    top1, seconds = pretrained_knn(method, data, weights, tmp_path / "run")
    closed = (top1 - random_top1) / (teacher - random_top1)
    print(f"{method}: random {random_top1:.2f} % → pretrained {top1:.2f} % (teacher {teacher:.2f} %): "
          f"{100 * closed:.0f} % of the gap closed in {seconds:.0f} s")
    assert closed >= 0.5, (method, random_top1, top1, teacher)


def test_mae_pretraining_is_measured_the_same_way(protocol, tmp_path):
    data, weights, _ = protocol
    random_top1 = floor("mae", data)
    top1, seconds = pretrained_knn("mae", data, weights, tmp_path / "run")
    print(f"mae: random {random_top1:.2f} % → pretrained {top1:.2f} % in {seconds:.0f} s")
    assert top1 > random_top1, (random_top1, top1)
