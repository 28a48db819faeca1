"""Reports: tables and figures built from run directories only (they never load a model)."""
