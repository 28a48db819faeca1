"""Pure analyses of typed result rows: curve shapes, rebound metrics, resistance pairs (no model, no file)."""
