"""Agentic RL for language models on JAX: environments, actors, learner."""
