"""Figures: functions that take arrays and return matplotlib figures (saving is the caller's job)."""
