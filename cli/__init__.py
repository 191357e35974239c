"""The `servicefactory` command line (installed as the package servicefactory.cli)."""
