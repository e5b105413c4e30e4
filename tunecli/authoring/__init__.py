"""Writing recipes: the wizard, defaults, checks, memory estimate, naming and rendering."""
