"""Evaluation: what pruning did to a model, measured (:mod:`.report`), and latency you can trust
(:mod:`.latency`).
"""
