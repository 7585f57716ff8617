"""On resume, the saved configuration against the new one. Fields that define the run (the method and its model,
the data, the batch, the schedule, the optimizer) must match, or the continued run would not be the run that was
saved; fields about how it is run and reported may change."""
from __future__ import annotations

from fastmim.config import MAY_CHANGE_ON_RESUME


def flatten(config: dict, prefix: str = "") -> dict:
    """{'train.max_steps': 20, …}, with tuples as lists (a YAML file and a checkpoint spell them differently)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and prefix.count(".") < 1:  # sections and their fields; dict fields stay whole
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def compare(saved: dict, now: dict) -> tuple[list[str], list[str]]:
    """(refused differences, accepted differences), each 'field: saved → now'."""
    old, new = flatten(saved), flatten(now)
    refused, accepted = [], []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, "(absent)"), new.get(name, "(absent)")
        if before == after:
            continue
        line = f"{name}: {before!r} → {after!r}"
        (accepted if name.startswith(MAY_CHANGE_ON_RESUME) else refused).append(line)
    return refused, accepted
