"""`python -m servicefactory`: the same as the `servicefactory` command."""
from servicefactory.cli.main import main

main()
