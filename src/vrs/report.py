"""`python -m vrs.report` = `vrs-report`."""

from vrs.apps.report import main

if __name__ == "__main__":
    main()
