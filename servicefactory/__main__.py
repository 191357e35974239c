"""`python -m servicefactory`: the same as the `servicefactory` command."""
from servicefactory.cli.fast import main

main()
