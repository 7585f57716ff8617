"""Configuration values against their fields' declared types (fastmim.config_values), and JSON outputs that
hold null where a value is not finite."""
from __future__ import annotations

import json
import math

import pytest

from fastmim.config import Config, set_field
from fastmim.config_values import ConfigValueError, coerce
from fastmim.train.metrics import MetricsWriter
from fastmim.train.report import write_summary


@pytest.mark.parametrize("value, annotation, expected", [
    ("1e-4", float, 1e-4), (3, float, 3.0), ("3", int, 3), (4.0, int, 4), ("yes", bool, True), ("off", bool, False),
    (True, bool, True), ([0.2, "1e-1"], tuple, (0.2, 0.1)), ("clip_b16", tuple, ("clip_b16",)),
    (None, float | None, None), ("2.5", float | None, 2.5), ({"depth": "1e3"}, dict, {"depth": 1000.0}),
    (7, str, "7"),
])
def test_values_become_the_declared_type(value, annotation, expected):
    result = coerce(value, annotation, "x.y")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value, annotation, words", [
    ("abc", float, "x.y must be float, got 'abc'"), (True, int, "x.y must be int, got True"),
    (2.5, int, "must be int"), ("maybe", bool, "must be bool"), (None, int, "x.y is int and cannot be null"),
    (3, tuple, "must be tuple"), ([1], dict, "must be dict"),
])
def test_wrong_values_name_the_field_the_type_and_the_value(value, annotation, words):
    with pytest.raises(ConfigValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        coerce(value, annotation, "x.y")


def test_dotted_paths_reach_into_dict_fields():
    cfg = Config()
    set_field(cfg, "method.teacher_kwargs.depth", 6)
    set_field(cfg, "method.teacher_kwargs.extra.width", "1e-2")
    assert cfg.method.teacher_kwargs == {"depth": 6, "extra": {"width": 0.01}}
    with pytest.raises(ConfigValueError, match="unknown field 'nope' in train; known: .*log_every"):
        set_field(cfg, "train.nope", 1)


def test_json_outputs_hold_null_for_values_that_are_not_finite(tmp_path):
    write_summary(tmp_path, {"steps": 0, "final_loss": math.nan, "images_per_sec": math.inf})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"steps": 0, "final_loss": None,
                                                                  "images_per_sec": None}
    writer = MetricsWriter(tmp_path, 0, tensorboard=False)
    writer.write({"step": 1, "loss": math.nan})
    writer.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": None}
