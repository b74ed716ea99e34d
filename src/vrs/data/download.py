"""`python -m vrs.data.download NAME [BASE]`: fetch a data set's official files (used by `make data`)."""

import sys
from pathlib import Path

from vrs.data.sources import REMOTES, download_official
from vrs.errors import VRSError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in REMOTES:
        print(f"usage: python -m vrs.data.download {{{','.join(REMOTES)}}} [BASE_DIR]", file=sys.stderr)
        return 2
    base = Path(argv[1]) if len(argv) > 1 else Path("data")
    try:
        folder = download_official(argv[0], base)
    except VRSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{argv[0]}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
