"""Built-in conflict resolvers of Dynamo in Python (installed as ``dynamo_resolvers``)."""
