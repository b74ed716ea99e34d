"""Instruments for judging VRS against fixed-sigma smoothing (issue 17 section 1): pure numpy / scipy
functions on per-image results, no torch, no apps. vrs-report and the training callbacks call them.

outcomes: per-image outcomes (certified at r, radius if correct, robust under every attack) and lining up
runs by image index; standard_error: error bars of an accuracy and of a mean; frontier: the fixed-sigma
Pareto frontier and how far a VRS operating point lies above or below it at the same clean accuracy, with
a paired standard error over the same images; oracle: the per-image best grid sigma (a label-using
diagnostic of the headroom any selector has on a base classifier, never a certificate); sigma_spread: how
much the chosen sigma varies across images (spread, histogram over the grid, rank correlations, per class).
"""
