"""The fedseg command line: one console script with a sub-command per role."""
