"""Import verl launch scripts: read as text, never run."""
