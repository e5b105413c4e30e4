"""Launching recipes: which files to trust, what the machine offers, the command lines, the child process.

``tune run`` (``tunecli/cli/run.py``) only parses flags and prints; the decisions live here so they can
be tested without a terminal.
"""
