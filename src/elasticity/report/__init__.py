"""Reports: result files and figures from typed rows (they never load a model and never read a stage)."""
