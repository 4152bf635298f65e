"""`rewarm reproduce PAPER`: the papers' experiments as real sweeps on a spec's world, and their findings."""
