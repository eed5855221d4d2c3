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

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):   # run as a file (flink run -py .../job.py): find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "integrations.flink"


from runtime import LstmEdgeError, load  # noqa: E402
from runtime import lines as fmt  # noqa: E402
from runtime.alerts import AlertConfig  # noqa: E402
from runtime.state import CODEC, MAGIC  # noqa: E402

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


def latest_checkpoint(folder: Path) -> Path:
    """The newest complete checkpoint (``<job>/chk-N`` with ``_metadata``) under ``folder``."""
    found = [(p.parent.stat().st_mtime, int(m.group(1)), p.parent)
             for p in folder.glob("*/chk-*/_metadata")
             if (m := re.fullmatch(r"chk-(\d+)", p.parent.name))]
    if not found:
        raise LstmEdgeError(f"--resume latest: no complete checkpoint (chk-N/_metadata) under "
                            f"{folder}; start without --resume")
    return max(found)[2]


def state_fingerprints(checkpoint: Path, most: int = 64 << 20) -> set[str]:
    """The model fingerprints (sha256) in the sensors' state bytes of a local ``chk-N``.

    Each sensor's state is the runtime's codec (:mod:`runtime.state`), whose head is the magic
    ``LEst``, the codec, a flags byte and the model's sha256; Flink keeps small state inline in
    ``_metadata`` and larger state in files beside it, with the heap backend uncompressed, so
    the heads are there to read. Empty where none is found (RocksDB's compressed files, a
    job with no sensor yet): the restore then checks each sensor's state (see failure()).
    ``most``: bytes read at most, the first files first.
    """
    head = re.compile(re.escape(MAGIC) + bytes([CODEC]) + b".(.{32})", re.DOTALL)
    found: set[str] = set()
    budget = most
    files = sorted(checkpoint.iterdir(), key=lambda p: p.name != "_metadata")
    for path in files:
        if not path.is_file() or budget <= 0:
            continue
        with open(path, "rb") as f:
            data = f.read(budget)
        budget -= len(data)
        found.update(m.group(1).hex() for m in head.finditer(data))
        if found:
            break
    return found


JOB_RECORD = "lstm-edge-job.json"   # beside the checkpoints: what the job was started with


def job_record(config: JobConfig, model) -> dict:
    """What a resumed job must agree on, as recorded beside a local ``--checkpoint-dir``."""
    return {"model": Path(config.model).name, "sha256": model.fingerprint,
            "output": "-" if config.output == "-" else "folder", "operator": config.operator}


def check_resume(config: JobConfig, model, checkpoint: Path) -> None:
    """Refuse, before the start, a ``--resume`` the checkpoint cannot be restored into:
    state taken with another model file, or a part-file sink (``-o DIR``) and now ``-o -``.

    The model is read from the checkpoint's state itself (:func:`state_fingerprints`); its
    file name and the output from the record a local ``--checkpoint-dir`` keeps.
    """
    if checkpoint.is_file():        # chk-N/_metadata given itself
        checkpoint = checkpoint.parent
    recorded: dict = {}
    path = checkpoint.parent.parent / JOB_RECORD
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict):
            recorded = {}
    except (OSError, ValueError):
        pass
    theirs = state_fingerprints(checkpoint)
    if theirs and model.fingerprint not in theirs:
        sha = sorted(theirs)[0]
        name = recorded.get("model") if recorded.get("sha256") == sha else None
        taken = f"{name} (sha256 {sha[:12]}…)" if name else f"a model file with sha256 {sha[:12]}…"
        raise LstmEdgeError(
            f"--resume: the checkpoint {checkpoint} was taken with {taken}, and this job runs "
            f"{Path(config.model).name} (sha256 {model.fingerprint[:12]}…), so no sensor's "
            f"state could be restored; resume with the model file the checkpoint was taken "
            f"with, or start without --resume (every sensor then starts from zero state)")
    if recorded.get("output") == "folder" and config.output == "-":
        raise LstmEdgeError(
            f"--resume: the checkpoint {checkpoint} was taken with -o a folder (its part "
            f"files' progress is in the checkpoint), and this job has -o -; resume with -o "
            f"a folder (the one it wrote, or a new one), or start without --resume")


def write_record(config: JobConfig, model) -> None:
    """Record what the job runs with beside a local ``--checkpoint-dir`` (for --resume)."""
    if config.checkpoint_dir is None or "://" in config.checkpoint_dir:
        return
    path = Path(config.checkpoint_dir) / JOB_RECORD
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(job_record(config, model)) + "\n")
    except OSError as exc:
        raise LstmEdgeError(f"--checkpoint-dir {config.checkpoint_dir}: cannot write there "
                            f"({exc.strerror or exc}); give a folder you can write") from None


def shard_count(config: JobConfig) -> int:
    """The batched operator's shard count: ``--shards``; for ``--resume latest`` the count
    recorded beside the checkpoints (another is refused here); else 4 per task slot.

    A local ``--checkpoint-dir`` records the count it is used with, so that a job resumed
    with another ``--parallelism`` keeps its shards: the sensors' state is where they are.
    """
    record = None
    if config.checkpoint_dir is not None and "://" not in config.checkpoint_dir:
        record = Path(config.checkpoint_dir) / "lstm-edge-shards"
    recorded = None
    if config.resume == "latest" and record is not None and record.exists():
        text = record.read_text(errors="replace").strip()
        if not text.isdigit() or int(text) < 1:
            raise LstmEdgeError(f"{record} should hold the shard count the checkpoints were "
                                f"taken with, and holds {text[:40]!r}; write the count there "
                                f"(or give --shards), or start afresh")
        recorded = int(text)
        if config.shards not in (None, recorded):
            raise LstmEdgeError(f"--shards {config.shards}: the checkpoints under "
                                f"{config.checkpoint_dir} were taken with {recorded} shards, "
                                f"and each sensor's state is in its shard; resume without "
                                f"--shards (or with --shards {recorded}), or start afresh")
    shards = config.shards or recorded or 4 * config.parallelism
    if record is not None and config.resume in (None, "latest"):   # what "latest" will find
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(f"{shards}\n")
        except OSError as exc:
            raise LstmEdgeError(f"--checkpoint-dir {config.checkpoint_dir}: cannot write "
                                f"there ({exc.strerror or exc}); give a folder you can "
                                f"write") from None
    return shards


# ---- the job ---------------------------------------------------------------------------

def uri(path: str) -> str:
    """A local path as a file:// URI; a URI (s3://, hdfs://, file://) as it is."""
    return path if "://" in str(path) else Path(path).absolute().as_uri()


def resume_path(config: JobConfig) -> str | None:
    """The checkpoint ``--resume`` names (``latest``: the newest under --checkpoint-dir)."""
    if config.resume is None:
        return None
    path = config.resume
    if config.resume == "latest":
        if config.checkpoint_dir is None or "://" in config.checkpoint_dir:
            raise LstmEdgeError("--resume latest needs a local --checkpoint-dir; on a "
                                "cluster give the chk-N path")
        path = str(latest_checkpoint(Path(config.checkpoint_dir)))
    elif "://" not in path and not (Path(path).is_file()
                                    or (Path(path) / "_metadata").is_file()):
        raise LstmEdgeError(f"--resume {path}: expected a checkpoint (a chk-N folder "
                            f"holding _metadata), found "
                            f"{'no _metadata there' if Path(path).exists() else 'nothing'}; "
                            f"give a chk-N folder under the --checkpoint-dir, or "
                            f"--resume latest")
    return path


def flink_config(config: JobConfig, resume: str | None = None) -> dict[str, str]:
    """The Flink settings the job runs with; ``resume``: the checkpoint to start from."""
    settings = {
        "python.executable": config.python,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": str(config.bundle_size),
        "python.fn-execution.bundle.time": str(config.bundle_time_ms),
        "python.execution-mode": config.execution_mode,
        "state.backend.type": config.state_backend,
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "2",
        "restart-strategy.fixed-delay.delay": "1 s",
    }
    if config.checkpoint_dir is not None:
        settings.update({
            "execution.checkpointing.dir": uri(config.checkpoint_dir),
            "execution.checkpointing.interval": f"{int(config.checkpoint_every * 1000)} ms",
            "execution.checkpointing.mode": "EXACTLY_ONCE",
            "execution.checkpointing.externalized-checkpoint-retention":
                "RETAIN_ON_CANCELLATION",
        })
    if resume is None and config.resume is not None:
        resume = resume_path(config)
    if resume is not None:
        settings["execution.state-recovery.path"] = uri(resume)
    return settings


def build(config: JobConfig):
    """The Flink environment with the job's pipeline on it, ready to ``execute``."""
    from pyflink.common import Configuration, Duration, Encoder, Types, WatermarkStrategy
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.file_system import (
        BucketAssigner, FileSink, FileSource, OutputFileConfig, RollingPolicy, StreamFormat)

    from .operators import ROUTED, SHARDED, BatchPredict, Predict, Route, RouteShard

    model = load(config.model, device="cpu", missing=config.missing)   # refused here, not in a task
    data = Path(config.model).read_bytes()
    spec = line_spec(config, model)
    answers_format = LineJob(data, spec, config.missing).format   # --interval refused here too
    resume = resume_path(config)
    if resume is not None and "://" not in resume:
        check_resume(config, model, Path(resume))
    shards = shard_count(config) if config.operator == "batched" else 0
    if config.resume in (None, "latest"):
        write_record(config, model)
    settings = flink_config(config, resume)
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


def failure(exc: Exception) -> str:
    """The one line worth showing from a failed job's Java stack trace."""
    text = str(exc)
    if "Cannot map checkpoint/savepoint state for operator" in text:
        return ("the checkpoint holds state of an operator this job does not have: it was "
                "taken with another --operator or --shards (the shards a sensor goes to "
                "would differ), or with -o a folder where this job has -o -; resume with "
                "the options it was taken with, or start without --resume")
    other = re.search(r"the keyed state: it was made for another model \(file sha256 (\w+)…, "
                      r"this one is (\w+)…\)", text)
    if other:   # a checkpoint check_resume() could not read: each sensor's state says it
        return (f"the checkpoint's keyed state was taken with another model (sha256 "
                f"{other[1]}…; this job's model file is sha256 {other[2]}…); resume with the "
                f"model file the checkpoint was taken with, or start without --resume "
                f"(every sensor then starts from zero state)")
    for pattern in (r"(?:runtime\.errors\.)?(\w+Error: [^\n]+)", r"Caused by: ([^\n]+)"):
        found = re.findall(pattern, text)
        if found:
            return found[-1].strip()
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


if __name__ == "__main__":   # flink run -py integrations/flink/job.py MODEL ...
    from .cli import main
    main()
