"""``python -m mobilepeft``: the whole CLI (the installed ``mobilepeft`` script's function), also what
``torchrun -m mobilepeft train ...`` starts on every rank."""

from mobilepeft.export.cli import main

if __name__ == "__main__":
    main()
