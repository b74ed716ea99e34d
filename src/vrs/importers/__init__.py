"""Importers for base classifiers published by other randomized-smoothing codebases (vrs-import).

`codebases` says what each codebase writes (file layout, `arch` names, nesting, where it normalises);
`convert` reads such a file, maps its weights onto this project's network with the normalisation inside it,
and builds a checkpoint that vrs.checkpoint reads like one of vrs-train's.
"""
