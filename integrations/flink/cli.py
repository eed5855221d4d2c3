"""The job's command line: a thin click command over :func:`integrations.flink.job.build`."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

from runtime import LstmEdgeError
from runtime import alerts_run

from .job import JobConfig, build, failure

EPILOG = """
\b
Each sensor's readings must arrive in time order (one file per sensor,
or a Kafka topic keyed by sensor). Files are read in no fixed order:
with --watch, add a sensor's next file once its last one is answered. With --time-column, a reading whose
time is not after its sensor's last one gets an error record and is not
fed; without it, order cannot be checked (--no-time-column says so).

\b
Answers are lstm-run's: the input line plus step, warmup, pred_<target>
(and with --interval lo_/hi_<target>, anomaly, score and alert, each
sensor's alert state kept in keyed state with its stream); a bad line
gives an error record and leaves its sensor's state as it was.
--output DIR gets part files, exactly once: a part is finished (renamed
from its hidden .inprogress name) at each checkpoint, so read the files
whose names do not start with a dot.

\b
\b
Exit codes: 0 the input was read to the end (or the job was stopped),
1 the job failed, 2 a usage, model or input-format problem, or a
--resume checkpoint the job cannot go on from: damaged, or another
job's (its record names another input, model, -o, --operator or
--shards). Flink's own output goes to a log file, named in the Error
line of a failed job. A resume with other alert settings says so in a
Note line; each sensor's alerts then start afresh.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                                "max_content_width": 100})
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-i", "--input", "input_", type=click.Path(exists=True, path_type=Path),
              help="Folder of CSV or JSONL files (or one file) to read.")
@click.option("--watch", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Keep running and read new files in --input, looking this often.")
@click.option("--kafka", metavar="HOST:PORT[,...]",
              help="Read a Kafka topic instead (needs --topic and --jar with the connector).")
@click.option("--topic", help="The Kafka topic; its records keyed by sensor.")
@click.option("--group", default="lstm-edge", show_default=True, help="Kafka consumer group.")
@click.option("--start", type=click.Choice(["earliest", "committed", "latest"]),
              default="earliest", show_default=True,
              help="Where a job started without --resume reads the topic from (committed: "
                   "the group's offsets, else earliest). A resumed job goes on from its "
                   "checkpoint.")
@click.option("--jar", "jars", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A jar to add to the job, e.g. flink-sql-connector-kafka-*.jar.")
@click.option("-o", "--output", default="-", show_default=True,
              help="Folder for the answer part files, or - for stdout.")
@click.option("--format", "format_", type=click.Choice(["auto", "csv", "headerless", "jsonl"]),
              default="auto", show_default=True, help="Input format, as lstm-run's.")
@click.option("--columns", help="Comma-separated CSV columns, for input without a header line.")
@click.option("--stream-column", metavar="NAME", help="Column or key naming each line's sensor.")
@click.option("--time-column", metavar="NAME",
              help="Column or key with each reading's time (number or ISO-8601).")
@click.option("--no-time-column", is_flag=True,
              help="Run without an order check: the source guarantees per-sensor order.")
@click.option("--missing", type=click.Choice(["error", "skip", "hold"]), default="error",
              show_default=True, help="What a missing value does, as lstm-run's.")
@alerts_run.options
@click.option("--checkpoint-dir", metavar="DIR|URI",
              help="Where checkpoints go (kept when the job stops, for --resume); on a "
                   "cluster a shared URI such as s3://bucket/checkpoints.")
@click.option("--checkpoint-every", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, metavar="SECONDS", help="Checkpoint interval.")
@click.option("--resume", metavar="latest|PATH",
              help="Start from a checkpoint: the newest under --checkpoint-dir, or a chk-N folder.")
@click.option("--state-ttl", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Drop a sensor's state after this long without a reading.")
@click.option("-p", "--parallelism", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--state-backend", type=click.Choice(["hashmap", "rocksdb"]), default="hashmap",
              show_default=True, help="hashmap: state on the heap; rocksdb: on local disk.")
@click.option("--bundle-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Records per Python bundle (python.fn-execution.bundle.size).")
@click.option("--bundle-time", type=click.IntRange(min=1), default=100, show_default=True,
              metavar="MS", help="Longest a bundle waits before it is flushed.")
@click.option("--operator", type=click.Choice(["batched", "record"]), default="batched",
              show_default=True,
              help="batched: sensors in shards, a shard's lines answered together (fast); "
                   "record: one line at a time (no flush wait).")
@click.option("--shards", type=click.IntRange(min=1),
              help="Sensor shards (batched): the most task slots that share the work; fewer "
                   "shards, wider batches. Fixed for a job's life: --resume latest takes the "
                   "count recorded in --checkpoint-dir. [default: 4 per slot]")
@click.option("--flush-time", type=click.IntRange(min=1), default=200, show_default=True,
              metavar="MS", help="Longest a shard's lines wait before they are answered "
                                 "(batched).")
@click.option("--flush-size", type=click.IntRange(min=1), default=5000, show_default=True,
              help="A shard's lines are answered once this many wait (batched).")
@click.option("--restarts", type=click.IntRange(min=0), default=2, show_default=True,
              help="Times Flink restarts a failed task from the last checkpoint, 1 s apart, "
                   "before the job fails (0: it fails at once, for a service manager that "
                   "restarts it with --resume latest).")
@click.option("--execution-mode", type=click.Choice(["process", "thread"]), default="process",
              show_default=True, help="Python workers in their own processes, or in the JVM.")
@click.option("--python", "python", default=sys.executable, show_default="this Python",
              help="The Python the workers run; on a cluster, its path on the TaskManagers.")
def main(model, input_, watch, kafka, topic, group, start, jars, output, format_, columns,
         stream_column, time_column, no_time_column, missing, interval, min_run, hold_off, stuck,
         cusum, adapt, checkpoint_dir, checkpoint_every, resume, state_ttl, parallelism, state_backend,
         bundle_size, bundle_time, operator, shards, flush_time, flush_size, restarts,
         execution_mode, python):
    """Run MODEL.onnx over sensor lines on Flink, each sensor's LSTM state in keyed state.

    \b
      python -m integrations.flink exported/water-flow.onnx -i readings/ -o answers/ \\
          --stream-column sensor --time-column Time --checkpoint-dir checkpoints/
    """
    if (input_ is None) == (kafka is None):
        raise click.UsageError("give exactly one source: --input DIR or --kafka HOST:PORT")
    if kafka and not topic:
        raise click.UsageError("--kafka needs --topic")
    if watch and kafka:
        raise click.UsageError("--watch is for --input folders")
    if time_column is None and not no_time_column:
        raise click.UsageError("each sensor's readings must be checked for order: give "
                               "--time-column NAME (the column with each reading's time), or "
                               "--no-time-column if the source guarantees per-sensor order")
    if resume == "latest" and checkpoint_dir is None:
        raise click.UsageError("--resume latest needs --checkpoint-dir")
    config = JobConfig(model=model, input=input_, output=output, watch=watch, kafka=kafka,
                       topic=topic, group=group, start=start, format=format_,
                       columns=tuple(c.strip() for c in columns.split(",")) if columns else (),
                       stream_column=stream_column, time_column=time_column, missing=missing,
                       alerts=alerts_run.config(interval, min_run, hold_off, stuck, cusum,
                                                adapt),
                       checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                       resume=resume, state_ttl=state_ttl, parallelism=parallelism,
                       state_backend=state_backend, bundle_size=bundle_size,
                       bundle_time_ms=bundle_time, jars=tuple(jars),
                       execution_mode=execution_mode, python=python, operator=operator,
                       shards=shards, flush_ms=flush_time, flush_size=flush_size,
                       restarts=restarts)
    with quiet_stderr() as (say, log):
        try:
            env = build(config, note=say)
        except LstmEdgeError as exc:
            say(f"Error: {exc}")
            sys.exit(exc.exit_code)
        try:
            env.execute(f"lstm-edge {Path(model).name}")
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as exc:   # Py4JJavaError and friends: the Java trace, cut to its cause
            line, code = failure(exc, resumed=resume is not None)
            log.keep = True
            say(f"Error: the Flink job failed: {line} (Flink's output: {log.path})")
            sys.exit(code)


class _Log:
    def __init__(self, path: str):
        self.path, self.keep = path, False


@contextmanager
def quiet_stderr():
    """Flink's own output on stderr (its Python workers' tracebacks, its logs) goes to a
    file, so that the user sees the job's lines alone: yields ``say`` (a line to the real
    stderr) and the log, kept where the job failed (its path is in the Error line)."""
    fd, path = tempfile.mkstemp(prefix="lstm-edge-flink-", suffix=".log")
    log = _Log(path)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)               # inherited by the JVM and the Python workers it starts
    os.close(fd)
    user = os.fdopen(os.dup(saved), "w")

    def say(line: str) -> None:
        user.write(line + "\n")
        user.flush()

    try:
        yield say, log
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        user.close()
        if not log.keep:
            os.unlink(path)
