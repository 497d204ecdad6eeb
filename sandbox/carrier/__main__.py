"""``python -m sandbox.carrier --port 8765 ...``: the sandbox carrier in the foreground."""

from sandbox.carrier.app import main

main()
