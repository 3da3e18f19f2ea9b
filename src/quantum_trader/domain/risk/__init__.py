"""Risk-safety: one gate, small rules with typed rejection reasons, and position sizing."""
