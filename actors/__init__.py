"""Ray actors, one small module per role, plus a generic group helper."""
