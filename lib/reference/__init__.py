"""The papers' reported numbers as data files: lib/reference/<paper>/<table>.csv (read by lib.core.reference)."""
