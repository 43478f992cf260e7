"""``python -m cxrsem``: the same entry point as the ``cxrsem`` command."""

from cxrsem.cli import main

if __name__ == "__main__":
    main()
