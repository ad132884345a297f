"""`make bench`: runs every benchmark package under bench/, one after another, each as its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(p.name for p in here.iterdir() if (p / "__main__.py").exists())
    only = sys.argv[1:]
    failed = []
    for name in names:
        if only and name not in only:
            continue
        print(f"\n=== bench/{name} ===", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
