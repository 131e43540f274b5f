"""Fault models, seeded site sampling, campaigns and their statistics."""
