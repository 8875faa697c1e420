"""Tests for agentic.models."""
