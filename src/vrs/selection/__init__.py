"""Variational randomized smoothing: the noise-level selector and everything around it.

networks: selector networks h(x, lambda) with FiLM conditioning and a point or log-normal posterior;
priors: target noise distributions and their KL terms; soft: soft smoothing (the training signal and
the attacks' forward); lam: lambda samplers; median: median smoothing of the selector, the deployed sigma
(`deployed_sigma`) and its certified interval; certificates: C1 (locally constant sigma) and C2
(continuous sigma) radii; certify: certifying images with a selector (vrs-certify and the training
callback); model: VRS checkpoints; diagnostics: plots.
"""
