"""`workbench bench`: each measurement beside its reference implementation on the same machine and the same work,
in one run, so the ratio is the figure (the README's benchmark table).

suite      the runner and the training / rollout / env benchmarks
collect    activation collection with every hook stored
hooked     our hooked view of a torch module vs the module's own forward
patching   batched patching sweeps vs TransformerLens' generic_activation_patch
policies   the policies' forward passes vs plain torch and TransformerLens' native transformer
probes     the batched probe fit vs a loop of scikit-learn fits at equal settings
probe_sweep        the whole E1 probe sweep (every control, the bootstrap) vs the scikit-learn loop over the same grid
reference_probes   that scikit-learn loop: fits, controls and metrics per bootstrap replicate
training   a seed population trained with both cores busy vs one run at a time
"""

# name -> what it measures: the `workbench bench NAME` subcommands and their help (no torch here: the CLI reads it)
BENCHMARKS = {
    "env": "Env-steps/s of the batched TrashGrid core and its SB3 VecEnv vs MiniGrid stepped as a gymnasium env.",
    "train": "Time to solve TrashGrid (ours vs SB3's defaults), PPO env-steps/s and the trainer's overhead.",
    "transformer": "The transformer policy's forward vs the same model in plain torch and as TransformerBridge.",
    "collect": "Activation collection with every hook stored: the CNN over 1M observations, the transformer 200k.",
    "probes": "Probe fitting of one hook at three widths vs a loop of scikit-learn fits.",
    "patching": "A patching sweep over one hook per architecture vs TransformerLens' generic_activation_patch.",
    "hook": "The cost of our HookPoints on a forward pass, hooked and not.",
    "probe-sweep": "The E1 probe sweep, every control and the bootstrap, vs the scikit-learn loop over the same grid.",
    "patch-sweep": "Patching every hook at every granularity of both policies vs generic_activation_patch.",
    "train-seeds": "Training a seed population with both cores busy vs one run at a time.",
}
