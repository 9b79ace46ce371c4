"""Runs: what drives a job between its command and the products, once: the run context (configuration, outputs,
cluster), the inputs a run reads (the one place the virtual region is chosen) and the one tile streamer."""
