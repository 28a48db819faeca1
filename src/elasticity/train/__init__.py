"""One training loop for pre-training and SFT, and the `elasticity train` command."""
