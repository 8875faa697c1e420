"""Losses, advantages, train step, sharding rules, checkpoints."""
