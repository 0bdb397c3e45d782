"""Example ssl-toolkit plugin: ``upside-down`` (pretext task) and ``nearest-mean`` (evaluator)."""
