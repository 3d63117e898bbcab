"""Training loops (plain functions returning a history) and the few helpers they share."""
