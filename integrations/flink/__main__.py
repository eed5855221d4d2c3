"""``python -m integrations.flink``: run the job (see :mod:`integrations.flink.job`)."""

from .cli import main

main(prog_name="python -m integrations.flink")
