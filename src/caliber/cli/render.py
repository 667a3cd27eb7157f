"""Rendering for people: tables, trees, progress lines. Rich is imported only here, lazily."""
