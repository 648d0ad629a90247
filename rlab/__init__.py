"""rlab: policy-gradient RL and adversarial robustness for Hung-yi Lee's ML course.

The lab itself (agents, returns math, classifiers and data, benchmarks, plots,
run folders, the `rlab` CLI). The sibling packages `attacks`, `defenses` and
`envs` never import it.
"""

__version__ = "0.1.0"
