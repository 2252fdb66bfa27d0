"""What a lost Ray worker cost a training run, read from its driver's log (KubeRay's submitter prints it).

    kubectl logs job/<rayjob> | python hack/e2e_cost.py --interval 10

The driver logs rank 0's progress (`edgetune.progress: step 42/300 ...`) and, after a worker-group restart,
rank 0 logs where it resumed (`resuming from s3://.../checkpoint_000000040-ab12cd (step 40, epoch 1)`). For
each restart this prints the last step logged before it, the step it resumed from, and the difference: the
steps done twice. Exit status 1 when there was no restart, or when one redid more than `--interval` steps
(a checkpoint interval: what the design promises a killed worker costs at most).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

PROGRESS = re.compile(r"edgetune\.progress: step (\d+)/\d+")
RESUME = re.compile(r"resuming from (\S+) \(step (\d+), epoch \d+\)")


@dataclass(frozen=True)
class Restart:
    reached: int  # the last step logged before the restart
    resumed: int  # the step of the checkpoint it resumed from
    checkpoint: str

    @property
    def redone(self) -> int:
        return max(0, self.reached - self.resumed)


def restarts(lines: list[str]) -> list[Restart]:
    """Every resume after some progress (the first start of a fresh run resumes from nothing)."""
    found: list[Restart] = []
    reached = 0
    for line in lines:
        if progress := PROGRESS.search(line):
            reached = max(reached, int(progress.group(1)))
        elif (resume := RESUME.search(line)) and reached:
            found.append(Restart(reached, int(resume.group(2)), resume.group(1)))
            reached = int(resume.group(2))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=int, required=True, help="checkpoint.everySteps of the job")
    args = parser.parse_args(argv)
    found = restarts(sys.stdin.read().splitlines())
    if not found:
        print("no worker-group restart in the driver's log")
        return 1
    for restart in found:
        print(
            f"restart: reached step {restart.reached}, resumed from step {restart.resumed} "
            f"({restart.checkpoint}): {restart.redone} step(s) redone (checkpoint interval {args.interval})"
        )
    return 0 if all(r.redone <= args.interval for r in found) else 1


if __name__ == "__main__":
    sys.exit(main())
