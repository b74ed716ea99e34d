"""`python -m vrs.dashboard` = `vrs-dashboard`."""

from vrs.apps.dashboard import main

if __name__ == "__main__":
    main()
