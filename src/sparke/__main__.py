"""``python -m sparke generate ...`` (and ``accelerate launch -m sparke generate ...``): the ``sparke`` command."""

from sparke.cli import main

if __name__ == "__main__":
    main()
