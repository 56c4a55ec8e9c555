"""Built-in plugins of Dynamo in Python (installed as ``dynamo_plugins``).

Storage engines, partition strategies, failure detectors, and the Prometheus metrics
endpoint (``prometheus``).
"""
