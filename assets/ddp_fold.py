"""What `torchrun` runs for one fold with `[deploy] nproc_per_fold > 1`: `python -m assets.ddp_fold SPEC`.

Every rank trains (`birdpipe.training.ddp.train_rank`); rank 0 also speaks to Dagster
through Pipes: its log lines appear in the run's log, and its result comes back as a custom
message that the `trained_model` asset turns into its value and metadata.
"""

from __future__ import annotations

import os
import sys

from dagster_pipes import open_dagster_pipes

from birdpipe.training.ddp import result_dict, train_rank


def main(spec_path: str) -> int:
    if os.environ.get("RANK", "0") != "0":
        train_rank(spec_path, log=print)
        return 0
    with open_dagster_pipes() as pipes:
        result = train_rank(spec_path, log=pipes.log.info)
        pipes.report_custom_message(result_dict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
