"""`python -m vrs.train` = `vrs-train`."""

from vrs.apps.train import main

if __name__ == "__main__":
    main()
