"""Database: typed rows, repositories (the only SQL) and migrations."""
