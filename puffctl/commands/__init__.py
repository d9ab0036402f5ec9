"""Typer command groups: each parses, calls one function of a logic module, renders."""
