"""Run `python -m fastmim.pretrain ARGS` under torchrun with every torch.distributed collective that fastmim calls
counted; rank 0 writes the count to the JSON file named first:

    python -m torch.distributed.run --nproc_per_node=2 -m tests.train.count_collectives OUT.json ARGS…
"""
import json
import os
import sys

import torch.distributed as dist

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "barrier",
               "reduce", "gather", "gather_object", "scatter", "reduce_scatter", "all_to_all")


def counting(counts: dict, name: str):
    real = getattr(dist, name)

    def call(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)
    return call


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    counts: dict[str, int] = {}
    for name in COLLECTIVES:
        setattr(dist, name, counting(counts, name))
    from fastmim.pretrain import main as pretrain

    code = pretrain(args)
    if int(os.environ.get("RANK", 0)) == 0:
        with open(out, "w") as f:
            json.dump(counts, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
