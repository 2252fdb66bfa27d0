"""`edgetune-operator` under tracemalloc, for bench_operator.py --tracemalloc: on SIGUSR1 it writes a
snapshot to the path named in `<folder>/request`, then `<path>.done`.

    python bench/traced_operator.py FOLDER [edgetune-operator arguments...]
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def main() -> int:
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(1)

    def dump(signum: int, frame: FrameType | None) -> None:
        path = Path((folder / "request").read_text().strip())
        tracemalloc.take_snapshot().dump(str(path))
        Path(f"{path}.done").touch()

    signal.signal(signal.SIGUSR1, dump)
    from edgetune_operator.main import main as operator_main

    return operator_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
