"""``python -m anchor_free_app.convert``: see :mod:`anchor_free_app.convert.cli`."""
from .cli import main

if __name__ == "__main__":
    main()
