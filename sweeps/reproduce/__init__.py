"""`rewarm reproduce PAPER`: the papers' experiments as real sweeps on a spec's world, and their findings.

Owns: the experiments of each paper as grids over one base spec (`experiments`), reading a
finished sweep back from MLflow (`collect`), the findings as pure checks with stated
thresholds (`findings`), their figures (`figures`) and page (`page`), and running or
reusing the sweeps (`runner`).
May import: every other part of `sweeps/` except the CLI (it starts sweeps through
`sweeps.execution.driver`, like `rewarm sweep`), `trainers` and `search_spaces`.
"""
