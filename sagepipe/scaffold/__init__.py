"""Templates `sagepipe init` writes into a user's project."""
