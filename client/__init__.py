"""Hospital-side agent: data, training, and the round protocol over HTTPS."""
