"""The single controller: one module per job, each a loop that reads like its algorithm."""
