"""Quantum Trader: an AI-driven crypto futures trading platform."""

__version__ = "0.1.0"
