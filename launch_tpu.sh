#!/usr/bin/env bash
# Cloud TPU VM launcher (stub until the Sebulba issue completes it).
# It will: create or reuse a TPU VM, copy this repo, install requirements,
# start env host pools on CPU VMs, and run experiments/search_r1.py on
# --worker=all with jax.distributed initialization. --dry-run prints the
# gcloud commands without running them.
echo "launch_tpu.sh: not implemented yet (see BUILD.md, 'TPU deployment')" >&2
exit 2
