"""Command groups of the `gae` CLI; each module exposes `register(app)` and imports heavy
libraries only inside command bodies."""
