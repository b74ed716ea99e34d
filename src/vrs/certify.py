"""`python -m vrs.certify` = `vrs-certify`."""

from vrs.apps.certify import main

if __name__ == "__main__":
    main()
