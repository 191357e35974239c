"""Live views of the running services: `servicefactory top` (curses) and the web dashboard."""
