"""Built-in plugins of Dynamo in Python (installed as ``dynamo_plugins``).

Storage engines, partition strategies and failure detectors.
"""
