"""Changing activations and reading what changes.

patching      activation patching between contrast pairs: every site of a hook in batched, exact forwards
steering      steering vectors (contrast means, trash-at-cell, probe directions) and their effects on behaviour,
              beside same-norm random vectors and the sign-reversed vector
attribution   saliency and integrated gradients of logits or value, w.r.t. the observation or any hook
runs          patching and steering a saved run, as `workbench patch` and `workbench steer` do
"""
