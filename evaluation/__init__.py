"""Scores of generated samples against a known data density."""
