"""`python -m vrs.attack` = `vrs-attack`."""

from vrs.apps.attack import main

if __name__ == "__main__":
    main()
