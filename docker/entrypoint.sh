#!/bin/sh
# Run any command (vrs-train, vrs-certify, python -m vrs.demo, bash, ...). Bare Hydra overrides
# (`experiment=smoke`, `-m ...`, `--help`) are handed to vrs-train.
set -e
case "${1:-}" in
  -*|*=*) exec vrs-train "$@" ;;
  "") exec vrs-train --help ;;
  *) exec "$@" ;;
esac
