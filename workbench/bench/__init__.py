"""`workbench bench`: each measurement beside its reference implementation on the same machine and the same work,
in one run, so the ratio is the figure (the README's benchmark table).

suite      the runner and the training / rollout / env benchmarks
collect    activation collection with every hook stored
hooked     our hooked view of a torch module vs the module's own forward
patching   batched patching sweeps vs TransformerLens' generic_activation_patch
policies   the policies' forward passes vs plain torch and TransformerLens' native transformer
probes     the batched probe fit vs a loop of scikit-learn fits at equal settings
"""
