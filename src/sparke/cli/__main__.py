"""``python -m sparke.cli ...``: the ``sparke`` command."""

from sparke.cli import main

if __name__ == "__main__":
    main()
