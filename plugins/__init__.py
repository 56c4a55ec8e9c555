"""Built-in plugins of Dynamo in Python (installed as ``dynamo_plugins``): storage engines, partition strategies, failure detectors."""
