"""Noun extraction: the caption's noun phrases with their character spans."""
