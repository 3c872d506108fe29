"""`python -m workbench.cli ...` runs the `workbench` command."""

from workbench.cli.main import main

main()
