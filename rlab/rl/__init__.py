"""The RL half: returns math, policies and critics, the algorithm registry, the loops, evaluation, presets, the RL attack bench."""
