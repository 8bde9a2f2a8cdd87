"""Data: reading, validating, splitting, templating and tokenising task records."""
