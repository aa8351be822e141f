"""smm's Hydra sweeper plugin (see smm_sweeper.py)."""
