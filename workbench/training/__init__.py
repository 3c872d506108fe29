"""Training policies and keeping what training wrote.

config        TrainConfig (documented fields, checked ranges) and the named configs (`workbench train --config`)
ppo           `train`: stable-baselines3 PPO on the batched rooms, checkpoints on a schedule, resume
sb3_policy    our policies as an SB3 ActorCriticPolicy (bf16 autocast where it pays)
checkpoints   run directories: run.json, step files (safetensors + JSON), `load_policy`, RunLock, compact_run
seeds         one run per seed, here or as Ray tasks
sb3_import    a stable-baselines3 zip read without unpickling, written as a run
"""
