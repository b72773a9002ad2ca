"""One rank of the distributed test (tests/test_distributed.py): train, then dump the state.

Run as `python ddp_worker.py OUT_FILE OVERRIDE...` with torchrun's environment variables set;
`train_and_describe` is the same run in the calling process (a single-process reference).
"""

import sys

import torch

from crckd.dist import world_size
from crckd.engine import Trainer
from crckd.engine.distributed import plain_state_dict
from crckd.methods import load_config


def train_and_describe(overrides: list[str]) -> dict:
    """Train with `overrides`; the trained state and what the test compares between ranks."""
    trainer = Trainer(load_config(overrides=overrides))
    result = trainer.fit()
    first_batch = next(iter(trainer.train_loader(0).batch_sampler))
    return {
        "method": plain_state_dict(trainer.method),
        "metrics": result.metrics,
        "world_size": world_size(),
        "first_batch": first_batch,
        "global_draw": torch.rand(1),  # the global generator, as dropout would use it
    }


if __name__ == "__main__":
    out, overrides = sys.argv[1], sys.argv[2:]
    torch.save(train_and_describe(overrides), out)
