"""``python -m sandbox.carrier --port 8765 ...``: the sandbox carrier in the foreground."""

from sandbox.carrier.server import main

main()
