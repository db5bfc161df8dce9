"""Offline training of the shared feature model f(x; θ)."""
