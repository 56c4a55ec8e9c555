"""Dynamo in Python."""
