"""Code used by both the coordination server and the hospital client."""
