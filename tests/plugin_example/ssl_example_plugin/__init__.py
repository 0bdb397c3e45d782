"""Example ssl-toolkit plugin: ``upside-down`` (pretext task), ``nearest-mean`` (evaluator) and ``noise`` (data source)."""
