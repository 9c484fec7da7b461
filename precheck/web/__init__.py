"""The HTTP edge: one module per resource, each with `setup_routes(app)`."""
