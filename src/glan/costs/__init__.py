"""Money and time: the price table, the estimate before a run, the progress during it."""
