"""``python -m parley``: the command-line client."""

from parley.cli import app

app(prog_name="parley")
