"""Multi-turn agent loop (token in, token out) and actors."""
