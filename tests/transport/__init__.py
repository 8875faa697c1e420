"""Tests of agentic.transport (trajectory queue)."""
