"""`python -m vrs.importer` = `vrs-import`."""

from vrs.apps.importer import main

if __name__ == "__main__":
    main()
