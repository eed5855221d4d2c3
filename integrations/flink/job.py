"""The ready-to-run Flink job: sensor lines in, one answer per line out, state per sensor.

``python -m integrations.flink MODEL.onnx --input DIR --output DIR ...`` runs it on a local
mini-cluster; ``flink run -py integrations/flink/job.py ...`` submits the same job to a
cluster. Lines come from a folder of CSV/JSONL files (optionally watched for new files) or a
Kafka topic; answers go to part files (exactly once, finished at each checkpoint) or stdout.

The pipeline, batched (the default): source -> :class:`~.operators.RouteShard` (the shard of
each line's sensor) -> ``key_by`` shard -> :class:`~.operators.BatchPredict` (the shard's
sensors' streams and pending lines in keyed state) -> sink. Per record (``--operator
record``): :class:`~.operators.Route` -> ``key_by`` sensor -> :class:`~.operators.Predict`.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):   # run as a file (flink run -py .../job.py): find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "integrations.flink"


from runtime import LstmEdgeError, load  # noqa: E402
from runtime import lines as fmt  # noqa: E402
from runtime.alerts import AlertConfig  # noqa: E402

from . import resume  # noqa: E402
from .records import SOURCE_CHARSET, LineJob, LineSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class JobConfig:
    """Everything the job needs; the CLI's options, with their defaults."""

    model: Path
    input: Path | None = None            # folder of CSV/JSONL files (or one file)
    output: str = "-"                     # folder for part files, or "-" for stdout
    watch: float | None = None            # seconds between looks for new files (None: read once)
    kafka: str | None = None              # bootstrap servers; then topic and group are needed
    topic: str | None = None
    group: str = "lstm-edge"
    start: str = "earliest"               # where a new job starts in the topic (see kafka_source)
    format: str = "auto"                  # auto | csv | headerless | jsonl
    columns: tuple[str, ...] = ()         # the CSV columns where no file header gives them
    stream_column: str | None = None
    time_column: str | None = None
    missing: str = "error"
    alerts: AlertConfig | None = None     # --interval and its rules (None: no alert columns)
    checkpoint_dir: str | None = None     # a folder, or a URI (s3://, hdfs://) on a cluster
    checkpoint_every: float = 10.0        # seconds
    resume: str | None = None             # "latest" or a chk-N folder
    state_ttl: float | None = None        # seconds a silent sensor keeps its state
    parallelism: int = 1
    state_backend: str = "hashmap"        # hashmap (heap) | rocksdb (disk; huge key counts)
    bundle_size: int = 1000               # python.fn-execution.bundle.size
    bundle_time_ms: int = 100             # python.fn-execution.bundle.time
    execution_mode: str = "process"       # python.execution-mode: process | thread
    python: str = sys.executable          # the Python the workers run (on every TaskManager)
    jars: tuple[str, ...] = ()            # e.g. the Kafka connector jar
    operator: str = "batched"             # batched (shards, flushes) | record (one at a time)
    shards: int | None = None             # sensor shards (batched), the most slots that help;
                                          # None: as recorded for --resume latest, else 4 a slot
    flush_ms: int = 200                   # a shard's pending lines wait at most this long
    flush_size: int = 5000                # ... or until this many are pending
    restarts: int = 2                     # Flink's restarts of a failed task before the job fails


# ---- reading the input's format on the client ------------------------------------------

def input_files(path: Path) -> list[Path]:
    """The files the source will read under ``path``, as Flink lists them (no hidden ones)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()
                  and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))


def line_spec(config: JobConfig, model) -> LineSpec:
    """How the lines read: from ``--format``/``--columns``, else the first file's first line."""
    first = None
    if config.columns:
        first = fmt.join_csv(config.columns).encode()
    elif config.input is not None and config.format in ("auto", "csv"):
        for path in input_files(config.input):
            with open(path, "rb") as f:
                first = f.readline().rstrip(b"\r\n").removeprefix(b"\xef\xbb\xbf")
            if first.strip():
                break
    if first is None:
        if config.format in ("auto", "csv"):
            raise LstmEdgeError("cannot tell the input's format: no input file to read a first "
                                "line from; give --format jsonl, or --columns for CSV lines")
        first = b"{}" if config.format == "jsonl" else b"0"
    line_format, is_header = fmt.detect(first, model.features, model.targets,
                                        fmt="csv" if config.columns else config.format,
                                        stream_column=config.stream_column)
    columns = tuple(line_format.columns) if is_header else ()
    time_column = config.time_column
    if time_column is not None and columns:
        found = [c for c in columns if c == time_column] or \
                [c for c in columns if c.strip().lower() == time_column.strip().lower()]
        if not found:
            raise LstmEdgeError(f"the CSV header has no --time-column {time_column!r}; it has "
                                f"{', '.join(map(repr, columns))}")
        time_column = found[0]
    if time_column is not None and line_format.name == "headerless":
        raise LstmEdgeError("--time-column needs a CSV header or JSON lines to name the column")
    header = first.decode(SOURCE_CHARSET) if is_header and not config.columns else None
    return LineSpec(line_format.name, columns, config.stream_column, time_column, header,
                    config.alerts)


# ---- the job ---------------------------------------------------------------------------

def uri(path: str) -> str:
    """A local path as a file:// URI; a URI (s3://, hdfs://, file://) as it is."""
    return path if "://" in str(path) else Path(path).absolute().as_uri()


@dataclass
class Start:
    """Where the job starts from and what it records: :func:`plan`'s answer."""

    resume: str | None      # the checkpoint to restore (None: a fresh start)
    shards: int             # the batched operator's shard count (0: the per-record operator)
    job_id: str | None      # the job id fixed for a local --checkpoint-dir (its folder's name)
    record: dict | None     # what the job's checkpoints are taken with (resume.JOB_RECORD)
    note: str | None        # lines for stderr: the alert settings or --watch changed since the checkpoint


def plan(config: JobConfig, model) -> Start:
    """The checkpoint ``--resume`` names (``latest``: this job's newest under
    ``--checkpoint-dir``), checked as far as it can be before Flink starts
    (:mod:`.resume`), the shard count, and the record the job will keep.

    The shard count is ``--shards``; else the one the checkpoint was taken with (another is
    refused, since each sensor's state is in its shard), else 4 per task slot.
    """
    mine = resume.job_record(config, model, 0)
    path = config.resume
    if path == "latest":
        if not resume.local(config.checkpoint_dir):
            raise LstmEdgeError("--resume latest needs a local --checkpoint-dir; on a "
                                "cluster give the chk-N path")
        path = str(resume.latest(Path(config.checkpoint_dir), mine))
    elif path is not None and "://" not in path and not (
            Path(path).is_file() or (Path(path) / "_metadata").is_file()):
        raise LstmEdgeError(f"--resume {path}: expected a checkpoint (a chk-N folder "
                            f"holding _metadata), found "
                            f"{'no _metadata there' if Path(path).exists() else 'nothing'}; "
                            f"give a chk-N folder under the --checkpoint-dir, or "
                            f"--resume latest")
    checkpoint, note = None, None
    if path is not None and "://" not in path:
        checkpoint = Path(path).parent if Path(path).is_file() else Path(path)
        resume.check(config, model, checkpoint, mine)
        notes = [n for n in (resume.watch_note(config, checkpoint),
                             resume.settings_note(config, checkpoint)) if n is not None]
        note = "\n".join(notes) or None
    shards = 0
    if config.operator == "batched":
        shards = (resume.recorded_shards(checkpoint, config.shards) or config.shards
                  or 4 * config.parallelism)
    job_id = record = None
    if resume.local(config.checkpoint_dir):
        job_id = uuid.uuid4().hex
        record = {**mine, "shards": shards}
    return Start(path, shards, job_id, record, note)


def flink_config(config: JobConfig, start: Start) -> dict[str, str]:
    """The Flink settings the job runs with, from ``start`` (:func:`plan`)."""
    settings = {
        "python.executable": config.python,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": str(config.bundle_size),
        "python.fn-execution.bundle.time": str(config.bundle_time_ms),
        "python.execution-mode": config.execution_mode,
        "state.backend.type": config.state_backend,
        **({"restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": str(config.restarts),
            "restart-strategy.fixed-delay.delay": "1 s"} if config.restarts else
           {"restart-strategy.type": "none"}),
    }
    if config.checkpoint_dir is not None:
        settings.update({
            "execution.checkpointing.dir": uri(config.checkpoint_dir),
            "execution.checkpointing.interval": f"{int(config.checkpoint_every * 1000)} ms",
            "execution.checkpointing.mode": "EXACTLY_ONCE",
            "execution.checkpointing.externalized-checkpoint-retention":
                "RETAIN_ON_CANCELLATION",
        })
    if start.job_id is not None:
        # Flink puts the checkpoints in <checkpoint-dir>/<job id>/: fixed here, so that the
        # job's record is there before its first checkpoint.
        settings["$internal.pipeline.job-id"] = start.job_id
    if start.resume is not None:
        settings["execution.state-recovery.path"] = uri(start.resume)
    return settings


def check_metadata(checkpoint: Path) -> None:
    """Read a local checkpoint's ``_metadata`` with Flink's own reader, as the restore will:
    one line where it cannot be read (truncated, or written by another Flink)."""
    from py4j.protocol import Py4JJavaError
    from pyflink.java_gateway import get_gateway
    jvm = get_gateway().jvm
    meta = checkpoint / "_metadata"
    stream = jvm.java.io.DataInputStream(jvm.java.io.FileInputStream(str(meta)))
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.org.apache.flink.runtime.checkpoint.Checkpoints.loadCheckpointMetadata(
            stream, loader, str(checkpoint))
    except Py4JJavaError as exc:
        cause = exc.java_exception
        while cause.getCause() is not None:
            cause = cause.getCause()
        raise resume.CheckpointError(
            f"--resume: {meta} cannot be read ({cause.getClass().getSimpleName()}"
            f"{': ' + cause.getMessage() if cause.getMessage() else ''}): it is truncated or "
            f"damaged; resume from an earlier checkpoint (--resume PATH/chk-N), or start "
            f"without --resume") from None
    finally:
        stream.close()


def build(config: JobConfig, note=None):
    """The Flink environment with the job's pipeline on it, ready to ``execute``.

    ``note``: called with a line for the user (the alert settings changed since the
    checkpoint) before the job starts.
    """
    from pyflink.common import Configuration, Duration, Encoder, Types, WatermarkStrategy
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.file_system import (
        BucketAssigner, FileSink, FileSource, OutputFileConfig, RollingPolicy, StreamFormat)

    from .operators import ROUTED, SHARDED, BatchPredict, Predict, Route, RouteShard

    model = load(config.model, device="cpu", missing=config.missing)   # refused here, not in a task
    data = Path(config.model).read_bytes()
    spec = line_spec(config, model)
    answers_format = LineJob(data, spec, config.missing).format   # --interval refused here too
    start = plan(config, model)
    shards = start.shards
    settings = flink_config(config, start)
    if config.execution_mode == "thread":
        # The JVM runs Python in-process (PEMJA) and finds packages through PYTHONPATH only;
        # the JVM is started below, with this process's environment.
        import site
        paths = [*site.getsitepackages(), str(ROOT), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    flink_conf = Configuration()
    for key, value in settings.items():
        flink_conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(flink_conf)
    if start.resume is not None and "://" not in start.resume:
        check_metadata(Path(start.resume).parent if Path(start.resume).is_file()
                       else Path(start.resume))
    if start.note is not None and note is not None:
        note(start.note)
    if start.record is not None:
        resume.write_record(Path(config.checkpoint_dir) / start.job_id, start.record)
    env.set_parallelism(config.parallelism)
    for jar in config.jars:
        env.add_jars(Path(jar).absolute().as_uri())
    for package in ("runtime", "integrations"):    # shipped to the Python workers of a cluster
        env.add_python_file(str(ROOT / package))

    if config.kafka:
        lines = kafka_source(env, config)
    else:
        # one character per byte: the operators hand lstm-run's parser the very bytes
        builder = FileSource.for_record_stream_format(
            StreamFormat.text_line_format(SOURCE_CHARSET), str(Path(config.input).absolute()))
        if config.watch:
            builder = builder.monitor_continuously(
                Duration.of_millis(int(config.watch * 1000)))
        lines = env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), "lines")
    lines = lines.uid("source")
    if config.operator == "record":
        answers = (lines.flat_map(Route(data, spec, config.missing), output_type=ROUTED)
                   .name("route").uid("route")
                   .key_by(lambda routed: routed[0], key_type=Types.STRING())
                   .process(Predict(data, spec, config.missing, config.state_ttl),
                            output_type=Types.STRING())
                   .name("predict").uid("predict"))
    else:
        # The shard count is in the operator's uid: a checkpoint taken with another count
        # has no operator to restore into, and Flink refuses it (see failure()).
        answers = (lines.flat_map(RouteShard(data, spec, config.missing, shards),
                                  output_type=SHARDED)
                   .name("route").uid("route-shard")
                   .key_by(lambda routed: routed[0], key_type=Types.INT())
                   .process(BatchPredict(data, spec, config.missing, config.state_ttl,
                                         config.flush_ms, config.flush_size),
                            output_type=Types.STRING())
                   .name("predict").uid(f"predict-{shards}-shards"))
    if config.output == "-":
        if spec.header is not None:   # lstm-run's first line where the input has a header
            sys.stdout.write(f"{answers_format.header()}\n")
            sys.stdout.flush()
        answers.print()
    else:
        suffix = ".jsonl" if spec.format == "jsonl" else ".csv"
        out = uri(config.output)
        if "://" not in config.output:
            try:
                Path(config.output).mkdir(parents=True, exist_ok=True)
                if spec.format == "csv":   # part files hold answers only: the header beside
                    (Path(config.output) / "header.csv").write_text(
                        f"{answers_format.header()}\n")
            except OSError as exc:
                raise LstmEdgeError(f"-o {config.output}: cannot write the answers' folder "
                                    f"({exc.strerror or exc}); give -o a folder you can "
                                    f"write, or - for stdout") from None
        sink = (FileSink.for_row_format(out, Encoder.simple_string_encoder())
                .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
                .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
                .with_output_file_config(OutputFileConfig.builder().with_part_prefix("part")
                                         .with_part_suffix(suffix).build())
                .build())
        answers.sink_to(sink).name("answers").uid("answers")
    return env


def kafka_source(env, config: JobConfig):
    """Lines from a Kafka topic whose records are keyed by sensor (one partition each).

    Where the job reads from is Flink's checkpointed offsets; ``config.start`` says where a
    job that starts without a checkpoint begins: ``earliest``, ``latest``, or ``committed``
    (the group's committed offsets, the earliest where it has none).
    """
    from pyflink.common import WatermarkStrategy
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource
    starts = {"earliest": KafkaOffsetsInitializer.earliest,
              "latest": KafkaOffsetsInitializer.latest, "committed": committed_offsets}
    source = (KafkaSource.builder().set_bootstrap_servers(config.kafka)
              .set_topics(config.topic).set_group_id(config.group)
              .set_starting_offsets(starts[config.start]())
              .set_value_only_deserializer(SimpleStringSchema(SOURCE_CHARSET)).build())
    return env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka")


def committed_offsets():
    """``OffsetsInitializer.committedOffsets(EARLIEST)`` with either connector jar.

    PyFlink names the reset strategy's class as the SQL fat jar shades it; the thin
    ``flink-connector-kafka`` + ``kafka-clients`` jars have it under its own name.
    """
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer
    from pyflink.java_gateway import get_gateway
    jvm = get_gateway().jvm
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    for name in ("org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer",
                 "org.apache.kafka.clients.consumer"):
        try:
            strategy = jvm.java.lang.Class.forName(f"{name}.OffsetResetStrategy", True, loader)
        except Exception:   # Py4JJavaError: ClassNotFoundException, try the other name
            continue
        earliest = jvm.java.lang.Enum.valueOf(strategy, "EARLIEST")
        initializer = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer
        return KafkaOffsetsInitializer(initializer.OffsetsInitializer.committedOffsets(earliest))
    raise LstmEdgeError("--start committed: no Kafka connector jar on the job's class path; "
                        "add one with --jar (flink-sql-connector-kafka, or "
                        "flink-connector-kafka with kafka-clients)")


def failure(exc: Exception, resumed: bool = False) -> tuple[str, int]:
    """The one line worth showing from a failed job's Java stack trace, and the exit code:
    2 where the checkpoint it ``resumed`` cannot be read (bad input), else 1."""
    text = str(exc)
    if "Cannot map checkpoint/savepoint state for operator" in text:
        return ("the checkpoint holds state of an operator this job does not have: it was "
                "taken with another --operator or --shards (the shards a sensor goes to "
                "would differ), or with -o a folder where this job has -o -; resume with "
                "the options it was taken with, or start without --resume"), 2
    other = re.search(r"the keyed state: it was made for another model \(file sha256 (\w+)…, "
                      r"this one is (\w+)…\)", text)
    if other:   # a checkpoint resume.check() could not read: each sensor's state says it
        return (f"the checkpoint's keyed state was taken with another model (sha256 "
                f"{other[1]}…; this job's model file is sha256 {other[2]}…); resume with the "
                f"model file the checkpoint was taken with, or start without --resume "
                f"(every sensor then starts from zero state)"), 2
    damaged = _damage(text) if resumed else None
    if damaged:
        return (f"the checkpoint it resumed cannot be read ({damaged}): it is damaged, or "
                f"another program's; resume from an earlier checkpoint (--resume "
                f"PATH/chk-N), or start without --resume"), 2
    for pattern in (r"(?:runtime\.errors\.)?(\w+Error: [^\n]+)", r"Caused by: ([^\n]+)"):
        found = re.findall(pattern, text)
        if found:
            return found[-1].strip(), 1
    return (text.strip().splitlines()[0] if text.strip() else type(exc).__name__), 1


# Causes in a failed job's trace that say the restored checkpoint itself is unreadable.
_DAMAGE = (r"(RocksDBException: [^\n]+?)\s*(?: in /|\n|$)",
           r"SnapshotError: (the keyed state: [^\n]+?)(?:; [^;\n]*fresh[^\n]*)?(?:\n|$)",
           r"(FileNotFoundException: [^\n]+)")


def _damage(text: str) -> str | None:
    """The cause, in a few words, where ``text`` (a failed job's trace) says that the state
    restored from a checkpoint could not be read; None where it does not."""
    if "loadCheckpointMetadata" in text:
        cause = re.findall(r"Caused by: ([\w.]+(?:: [^\n]+)?)", text)
        return f"its _metadata: {cause[-1].rsplit('.', 1)[-1] if cause else 'unreadable'}"
    for pattern in _DAMAGE:
        found = re.search(pattern, text)
        if found:
            return found[1].strip()
    return None


if __name__ == "__main__":   # flink run -py integrations/flink/job.py MODEL ...
    from .cli import main
    main()
