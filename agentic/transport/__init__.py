"""Trajectory queue between actors and learner (gRPC and in-process)."""
