"""Research that scales and stays honest: walk-forward parameter optimisation (Optuna), and
the statistics that say whether what it found is real (CSCV's probability of backtest
overfitting, the deflated Sharpe ratio, parameter stability)."""
