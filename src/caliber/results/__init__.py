"""Results of workflow runs: the model, JSON conversion and ``get_results``."""
