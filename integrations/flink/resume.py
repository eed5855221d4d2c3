"""Where a job resumes from: its record beside its checkpoints, and the checks before a restore.

Flink writes a job's checkpoints under ``<checkpoint-dir>/<job id>/chk-N``. With a local
``--checkpoint-dir`` the job fixes its job id before it starts and writes, in that job id's
folder, :data:`JOB_RECORD`: what its checkpoints were taken with (the source, the model file
and its sha256, the output, the operator and its shards, the alert settings). So each
checkpoint has its own job's record, however many jobs share the folder:

- ``--resume latest`` takes the newest checkpoint whose record has this job's source and
  model, and refuses, in one line, where there is none (naming the newest other one);
- a checkpoint given by path is refused where its record names another source, model,
  operator or shard count, or a part-file output where this job has ``-o -``;
- other alert settings than the record's are said in one line (:func:`settings_note`); each
  sensor's alerts then start afresh (see :mod:`.records`);
- a local checkpoint's ``_metadata`` is read and every state file it names is checked for
  its recorded size (:func:`check_files`), so that a damaged checkpoint is one line before
  Flink starts, not a failure inside it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict
from pathlib import Path

from runtime import LstmEdgeError
from runtime.state import CODEC, MAGIC

JOB_RECORD = "lstm-edge-job.json"   # in <checkpoint-dir>/<job id>/: what the job ran with
METADATA_MAGIC = 0x4960672D         # the first four bytes of a Flink checkpoint's _metadata


class CheckpointError(LstmEdgeError):
    """A checkpoint that cannot be resumed: damaged, or another job's (exit code 2)."""


def local(checkpoint_dir: str | None) -> bool:
    """Whether the job can read and write the checkpoint folder itself (not a URI)."""
    return checkpoint_dir is not None and "://" not in checkpoint_dir


def source_of(config) -> str:
    """The readings a job reads, as its record names them: the input's absolute path, or
    ``kafka://SERVERS/TOPIC``."""
    if config.kafka:
        return f"kafka://{config.kafka}/{config.topic}"
    return str(Path(config.input).resolve())


def settings_of(config) -> dict | None:
    """The alert settings (``--interval`` and its rules) as the record keeps them."""
    return None if config.alerts is None else asdict(config.alerts)


def job_record(config, model, shards: int) -> dict:
    """What this job's checkpoints are taken with; a resume must agree on it."""
    return {"source": source_of(config), "model": Path(config.model).name,
            "sha256": model.fingerprint, "output": "-" if config.output == "-" else "folder",
            "operator": config.operator, "shards": shards, "alerts": settings_of(config),
            "watch": bool(config.watch)}


def write_record(folder: Path, record: dict) -> None:
    """Write ``record`` into a job id's folder (before the job's first checkpoint)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / JOB_RECORD).write_text(json.dumps(record) + "\n")
    except OSError as exc:
        raise LstmEdgeError(f"--checkpoint-dir {folder.parent}: cannot write there "
                            f"({exc.strerror or exc}); give a folder you can write") from None


def read_record(checkpoint: Path) -> dict | None:
    """The record of the job that took ``checkpoint`` (a ``chk-N`` folder); None where
    there is none (a checkpoint of another program, or of a job on a remote folder)."""
    try:
        record = json.loads((checkpoint.parent / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints (``<job>/chk-N/_metadata``) under ``folder``, newest first."""
    found = [(p.parent.stat().st_mtime, int(m.group(1)), p.parent)
             for p in folder.glob("*/chk-*/_metadata")
             if (m := re.fullmatch(r"chk-(\d+)", p.parent.name))]
    return [path for *_, path in sorted(found, reverse=True)]


def taken_with(record: dict) -> str:
    """A record's source and model, in words."""
    return (f"reading {record.get('source')} with {record.get('model')} "
            f"(sha256 {str(record.get('sha256'))[:12]}…)")


def latest(folder: Path, mine: dict) -> Path:
    """``--resume latest``: the newest checkpoint under ``folder`` taken by this job (its
    record has ``mine``'s source and model); one line where there is none."""
    found = checkpoints(folder)
    if not found:
        raise CheckpointError(f"--resume latest: no complete checkpoint (chk-N/_metadata) "
                              f"under {folder}; start without --resume")
    records = [(chk, read_record(chk)) for chk in found]
    for chk, record in records:
        if record and record.get("source") == mine["source"] \
                and record.get("sha256") == mine["sha256"]:
            return chk
    for chk, record in records:       # this input, another model: check() says which
        if record and record.get("source") == mine["source"]:
            return chk
    others = [(chk, record) for chk, record in records if record]
    if others:
        chk, record = others[0]
        raise CheckpointError(
            f"--resume latest: no checkpoint under {folder} was taken by this job (reading "
            f"{mine['source']}); the newest, {chk}, was taken {taken_with(record)}; resume "
            f"with that job's input and model, give this job's checkpoint as --resume "
            f"PATH, or start without --resume")
    raise CheckpointError(
        f"--resume latest: the checkpoints under {folder} carry no record of the job that "
        f"took them ({JOB_RECORD} in their job's folder), so they may be another job's; "
        f"give the one to resume as --resume PATH (the newest is {found[0]}), or start "
        f"without --resume")


def check(config, model, checkpoint: Path, mine: dict) -> None:
    """Refuse, before the start, a local checkpoint this job cannot resume: damaged
    (:func:`check_files`), another job's or taken with options its state depends on."""
    record = read_record(checkpoint) or {}
    theirs = state_fingerprints(checkpoint)
    if theirs and model.fingerprint not in theirs:
        sha = sorted(theirs)[0]
        record = record if record.get("sha256") == sha else {"sha256": sha}
    sha = record.get("sha256")
    if sha is not None and sha != model.fingerprint:
        name = record.get("model")
        taken = f"{name} (sha256 {sha[:12]}…)" if name else f"a model file with sha256 {sha[:12]}…"
        raise CheckpointError(
            f"--resume: the checkpoint {checkpoint} was taken with {taken}, and this job runs "
            f"{Path(config.model).name} (sha256 {model.fingerprint[:12]}…), so no sensor's "
            f"state could be restored; resume with the model file the checkpoint was taken "
            f"with, or start without --resume (every sensor then starts from zero state)")
    if record.get("source") not in (None, mine["source"]):
        raise CheckpointError(
            f"--resume: the checkpoint {checkpoint} was taken reading {record['source']}, and "
            f"this job reads {mine['source']}: its sensors' state and its place in the input "
            f"are that job's; resume with the input it was taken with, or start without "
            f"--resume")
    if record.get("output") == "folder" and config.output == "-":
        raise CheckpointError(
            f"--resume: the checkpoint {checkpoint} was taken with -o a folder (its part "
            f"files' progress is in the checkpoint), and this job has -o -; resume with -o "
            f"a folder (the one it wrote, or a new one), or start without --resume")
    if record.get("operator") not in (None, config.operator):
        raise CheckpointError(
            f"--operator {config.operator}: the checkpoint {checkpoint} was taken with "
            f"--operator {record['operator']}, whose state this one cannot read; resume with "
            f"--operator {record['operator']}, or start without --resume")
    check_files(checkpoint)


def recorded_shards(checkpoint: Path | None, asked: int | None) -> int | None:
    """The shard count the checkpoint was taken with (None: not recorded); another
    ``--shards`` is refused, since each sensor's state is in its shard."""
    record = read_record(checkpoint) if checkpoint is not None else None
    shards = record.get("shards") if record else None
    if shards is None:
        return None
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise CheckpointError(f"{checkpoint.parent / JOB_RECORD} should hold the shard count "
                              f"the checkpoint was taken with, and holds {shards!r}; give "
                              f"--shards, or start without --resume")
    if asked not in (None, shards):
        raise CheckpointError(f"--shards {asked}: the checkpoint {checkpoint} was taken with "
                              f"{shards} shards, and each sensor's state is in its shard; "
                              f"resume without --shards (or with --shards {shards}), or "
                              f"start without --resume")
    return shards


def settings_note(config, checkpoint: Path) -> str | None:
    """One line where this job's alert settings differ from those the checkpoint was taken
    with (None where they agree or are not recorded)."""
    record = read_record(checkpoint)
    if record is None or "alerts" not in record:
        return None
    before, now = record["alerts"], settings_of(config)
    if before == now:
        return None
    if before and now:     # the options that differ, in the options' words
        then = [f"--{k.replace('_', '-')} {before.get(k)}" for k in now if before.get(k) != now[k]]
        now_ = [f"--{k.replace('_', '-')} {now[k]}" for k in now if before.get(k) != now[k]]
        was, has = " ".join(then).replace("--level", "--interval"), \
            " ".join(now_).replace("--level", "--interval")
    else:
        was = f"--interval {before['level']}" if before else "no --interval"
        has = f"--interval {now['level']}" if now else "no --interval"
    then = ("each sensor's alerts start afresh from its next reading, as in a new job with "
            "these settings (its pending forecasts, counters, CUSUM sums and working quantile "
            "are dropped)" if now else "each sensor's alert state is dropped at its next "
            "reading (a later --interval job starts its alerts afresh)")
    return (f"Note: --resume: the checkpoint was taken with {was}, and this job has {has}: "
            f"{then}; its predictions go on from its state")


def watch_note(config, checkpoint: Path) -> str | None:
    """One line where the checkpoint's job watched its folder and this one does not: it
    reads what the checkpoint has not read, then ends, which looks like nothing at all."""
    record = read_record(checkpoint)
    if record is None or not record.get("watch") or config.watch or config.input is None:
        return None
    return (f"Note: --resume: the checkpoint was taken by a job watching {config.input} "
            f"(--watch); this job has no --watch, so it reads only the files that job had "
            f"not read, then ends; add --watch SECONDS to go on watching the folder")


# ---- what can be read of a checkpoint before Flink starts ------------------------------

def state_fingerprints(checkpoint: Path, most: int = 64 << 20) -> set[str]:
    """The model fingerprints (sha256) in the sensors' state bytes of a local ``chk-N``.

    Each sensor's state is the runtime's codec (:mod:`runtime.state`), whose head is the magic
    ``LEst``, the codec, a flags byte and the model's sha256; Flink keeps small state inline in
    ``_metadata`` and larger state in files beside it, with the heap backend uncompressed, so
    the heads are there to read. Empty where none is found (RocksDB's compressed files, a
    job with no sensor yet): the restore then checks each sensor's state (see job.failure()).
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


# A state file in _metadata, as Flink's MetadataV2V3SerializerBase writes it: a file handle
# (type 2, its size as a long, its path as Java's modified UTF-8; an inline handle, type 3,
# has a path for its name and no file) or a file in the chk-N folder (type 6, its UUID name,
# then its size). A missing chk-N file is left to Flink's restore (see job.failure()).
_FILE = re.compile(rb"\x02(.{8})(..)(file:/)", re.DOTALL)
_RELATIVE = re.compile(rb"\x06\x00\x24([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})(.{8})",
                       re.DOTALL)


def check_files(checkpoint: Path) -> None:
    """Refuse a local checkpoint whose ``_metadata`` is not Flink's or whose state files are
    missing or not of the size it records (truncated, or another checkpoint's)."""
    meta = checkpoint / "_metadata"
    try:
        data = meta.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"--resume: {meta} cannot be read ({exc.strerror or exc}); "
                              f"resume from another checkpoint, or start without "
                              f"--resume") from None
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != METADATA_MAGIC:
        raise CheckpointError(f"--resume: {meta} is not a Flink checkpoint's metadata (it "
                              f"starts {data[:8].hex() or 'empty'}, not {METADATA_MAGIC:08x}); "
                              f"resume from a chk-N folder Flink wrote, or start without "
                              f"--resume")
    problems = []
    for m in _FILE.finditer(data):
        if data[m.start(2) - 1] == 3:       # an inline handle's name (type 3): no file
            continue
        size, length = struct.unpack(">q", m[1])[0], struct.unpack(">H", m[2])[0]
        name = data[m.start(3):m.start(3) + length].decode("utf-8", "replace")
        problems += _file_problem(Path(name.removeprefix("file:")), size)
    for m in _RELATIVE.finditer(data):   # a name alone may be another id: files found only
        path = checkpoint / m[1].decode()
        if path.is_file():
            problems += _file_problem(path, struct.unpack(">q", m[2])[0])
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"--resume: the checkpoint {checkpoint} is damaged: "
                              f"{problems[0]}{more}; resume from an earlier checkpoint "
                              f"(--resume PATH/chk-N), or start without --resume")


def _file_problem(path: Path, size: int) -> list[str]:
    if not path.is_file():
        return [f"its state file {path} is missing"]
    found = path.stat().st_size
    return [] if found == size else [f"its state file {path} holds {found} bytes where "
                                     f"_metadata records {size}"]
