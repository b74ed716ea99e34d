"""Randomized smoothing: noise levels, the smoothed classifier and its statistics."""
