"""What every layer shares, and which imports nothing else of the workbench.

errors    WorkbenchError and its kinds; `unknown_name` (the nearest valid name in the message)
io        atomic writes (temp file, fsync, rename), several files committed as one, safe reads, JSON
stats     Wilson, Newcombe and t intervals; bootstrap and permutation tests over seeds (scipy)
tables    the tidy behaviour table and its rows (a rate with its Wilson interval, a mean with its t interval)
compute   torch helpers: device and precision, the device of a module, one_torch_thread
guards    checks made before any work: numbers, names, output paths, memory, host and port
progress  a bar on a terminal, plain lines elsewhere
tasks     independent pieces of work, run here or as Ray tasks
"""
