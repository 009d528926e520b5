"""Helpers shared by the trainer and the tools: the command-line layer (cli) and file writing (files)."""
