"""Live views of the running services: `servicefactory top` (rich) and the web dashboard."""
