"""``python -m noop_py``: the op's command without its console script."""

from . import main

main()
