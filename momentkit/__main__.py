"""``python -m momentkit`` (also used by ``torchrun -m momentkit``)."""

from momentkit.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
