"""`python -m starter` is the `ota` command (how `ota dev` starts its children)."""

from starter.cli import main

main()
