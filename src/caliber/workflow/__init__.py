"""Defining workflows: the model, the JSON file format and the in-process runner."""
