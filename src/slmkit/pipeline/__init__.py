"""Recipes: stages run in order into a run directory, and the report that shows what they gained and lost."""
