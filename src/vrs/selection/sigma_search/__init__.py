"""Test-time sigma searches: methods that choose the noise level of each input at inference without a trained
selector (the Hydra group `sigma_search`, conf/sigma_search/*.yaml). One method, one file:

* `multiscale` (`Multiscale`): cascaded smoothing (Jeong & Shin, NeurIPS 2023): from the largest grid sigma down,
  the first level whose top class is confidently above p0; certified soundly (a union bound over the levels).
* `dds` (`DataDependentSmoothing`): data-dependent smoothing (Alfarra et al., UAI 2022): per-input gradient ascent on
  the soft certified radius; its published certificate is not sound, so it is an empirical defence here.

Each method has the same three entry points, used by vrs-certify and vrs-attack:

    method.certify_groups(smoothed, groups, seed, n0, n, alpha, batch_size) -> rows per group   # vrs-certify
    method.deployed_sigma(f, x, generator) -> (B,) sigma      # what the deployed defence smooths x with (attacks)
    method.certificate                                         # the `cert` name (vrs.selection.certificates.ARGUMENTS)
"""

from __future__ import annotations

# Noise streams of the searches' own draws (the engine uses 0, 1, 2; the selector 3, 4): a level / step's draws
# come from stream_seed(image seed, SEARCH_STREAM + level), so they are independent of the certificate's draws.
SEARCH_STREAM = 16
