"""Concrete environments. Importing this package registers every bundled env."""
