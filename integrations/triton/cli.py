"""``lstm-triton``: an exported ONNX file to a Triton model repository (no TensorFlow needed)."""

from __future__ import annotations

import importlib.util

import click

from runtime.cli import reports_errors
from runtime.errors import MissingExtra

from . import TritonOptions


TRITON_EXAMPLES = """
\b
Examples:
  lstm-triton exported/water-flow.onnx -o models
  tritonserver --model-repository models
  lstm-triton co2.onnx -o models --name co2 --instance-kind gpu --instances 2 \\
      --max-candidate-sequences 20000 --idle-seconds 900

\b
Each sensor is one Triton sequence (sequence_id = sensor id, sequence_start on its first
reading); Triton keeps its state between requests and starts it from zeros. Window and
stateful models are served by a variant graph that keeps the window in Triton's state:
one reading per request, 'warmup' true (and y NaN) until the window has filled.
A request with a NaN (missing) or inf reading is not fed: y NaN, the sensor's state kept.
"""


def _defaults() -> TritonOptions:
    return TritonOptions()


@click.command(epilog=TRITON_EXAMPLES)
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "directory", type=click.Path(file_okay=False), required=True,
              help="The model repository; DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx "
                   "are written.")
@click.option("--name", help="Model name (its folder) [default: the file's stem].")
@click.option("--max-batch-size", type=click.IntRange(min=1),
              default=_defaults().max_batch_size, show_default=True,
              help="Most sensors' requests Triton runs in one call.")
@click.option("--max-candidate-sequences", type=click.IntRange(min=1),
              default=_defaults().max_candidate_sequences, show_default=True,
              help="Sensors one model instance serves at once; more wait until one ends. "
                   "Set it above the number of sensors streaming at once.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0),
              default=_defaults().max_queue_delay_us, show_default=True,
              help="How long (microseconds) a reading may wait for others to batch with.")
@click.option("--idle-seconds", type=click.FloatRange(min=0, min_open=True),
              default=_defaults().idle_seconds, show_default=True,
              help="A sensor silent this long loses its state (its next request must start "
                   "a new sequence). Set it above the longest gap between readings.")
@click.option("--instance-kind", type=click.Choice(["auto", "gpu", "cpu"]),
              default="auto", show_default=True,
              help="Where instances run; auto leaves it to Triton (a GPU where there is one).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances (per GPU with --instance-kind gpu).")
@reports_errors
def triton_main(model, directory, name, max_batch_size, max_candidate_sequences,
                max_queue_delay_us, idle_seconds, instance_kind, instances):
    """Write a Triton model repository for MODEL, an ONNX file written by lstm-export."""
    if importlib.util.find_spec("onnx") is None:
        raise MissingExtra("lstm-triton needs the ONNX package to write the graph Triton "
                           "serves: pip install 'lstm-edge[triton]' beside your [cpu] or [gpu]")
    from .repository import write_repository

    options = TritonOptions(name=name, max_batch_size=max_batch_size,
                            max_candidate_sequences=max_candidate_sequences,
                            max_queue_delay_us=max_queue_delay_us, idle_seconds=idle_seconds,
                            instance_kind=instance_kind, instances=instances)
    click.echo(write_repository(model, directory, options).summary())
