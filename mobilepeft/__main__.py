"""``python -m mobilepeft``: the CLI, also what ``torchrun -m mobilepeft train ...`` starts on every rank."""

from mobilepeft.cli import main

main()
