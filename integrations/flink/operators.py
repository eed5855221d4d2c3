"""The Python functions of the Flink job: route a line to its sensor (or shard), answer it.

Two operators answer lines: :class:`Predict` one line at a time, keyed by sensor, and
:class:`BatchPredict` (the default) keyed by a shard of sensors, answering a shard's pending
lines together. Each loads what it needs once per task, in ``open()``: the model's bytes
travel with the function (pickled into the job), so a TaskManager needs no copy of the file.
A sensor is keyed and stored under :func:`~.records.state_key` of its name: Flink's strings
are UTF-8, which a lone surrogate from a JSON key is not.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import (ListStateDescriptor, MapStateDescriptor, StateTtlConfig,
                                      ValueStateDescriptor)

from .batch import BatchJob, shard_of
from .records import LineJob, LineSpec, state_key

STATE_TYPE = Types.PICKLED_BYTE_ARRAY()   # one sensor's stream: runtime.state bytes
ROUTED = Types.TUPLE([Types.STRING(), Types.STRING()])   # (state_key(sensor), line)
SHARDED = Types.TUPLE([Types.INT(), Types.STRING()])     # (shard, line)
END_OF_INPUT = 2**63 - 1   # the final watermark of a bounded input (Long.MAX_VALUE)
WAKE = "\n"                # sent to every shard once a (re)started route sees its first line:
                           # never a line (lines are split at newlines)


def ttl(seconds: float) -> StateTtlConfig:
    """Flink's own state TTL, which frees the backend (the job checks the time itself too)."""
    return (StateTtlConfig.new_builder(Time.milliseconds(int(seconds * 1000)))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
            .build())


class Route(FlatMapFunction):
    """line -> (sensor's state key, line); a CSV header line is dropped, a bad line goes to
    sensor ""."""

    def __init__(self, model: bytes, spec: LineSpec, missing: str):
        self.model, self.spec, self.missing = model, spec, missing
        self.job = None

    def open(self, runtime_context: RuntimeContext):
        self.job = LineJob(self.model, self.spec, self.missing)

    def flat_map(self, value):
        key = self.job.key(value)
        if key is not None:
            yield state_key(key), value


class Predict(KeyedProcessFunction):
    """(sensor, line) -> answer line; the sensor's stream lives in keyed ``ValueState``.

    A bad line, or a reading older than the sensor's last, gives an error record and leaves
    the state as it was. With ``ttl_seconds``, a sensor silent for that long (processing
    time) loses its state and starts afresh, warm-up included.
    """

    def __init__(self, model: bytes, spec: LineSpec, missing: str,
                 ttl_seconds: float | None = None):
        self.model, self.spec, self.missing, self.ttl = model, spec, missing, ttl_seconds
        self.job = self.state = None

    def open(self, runtime_context: RuntimeContext):
        # PyFlink's Python-side state cache hands out values past their TTL, so the job
        # checks the time of each sensor's last write itself; Flink's TTL frees the backend.
        self.job = LineJob(self.model, self.spec, self.missing, self.ttl)
        descriptor = ValueStateDescriptor("stream", STATE_TYPE)
        if self.ttl:
            descriptor.enable_time_to_live(ttl(self.ttl))
        self.state = runtime_context.get_state(descriptor)

    def process_element(self, value, ctx):
        out, blob = self.job.answer(value[1], self.state.value(), value[0])
        if blob is not None:
            self.state.update(blob)
        yield out


class RouteShard(FlatMapFunction):
    """line -> (shard, line): :class:`Route`'s sensor, as its shard of ``shards``."""

    def __init__(self, model: bytes, spec: LineSpec, missing: str, shards: int):
        self.model, self.spec, self.missing, self.shards = model, spec, missing, shards
        self.job = None
        self.woken = False

    def open(self, runtime_context: RuntimeContext):
        self.job = LineJob(self.model, self.spec, self.missing)

    def flat_map(self, value):
        if not self.woken:    # every shard, so that lines restored in a quiet one are flushed
            self.woken = True
            for shard in range(self.shards):
                yield shard, WAKE
        key = self.job.key(value)
        if key is not None:
            yield shard_of(key, self.shards), value


class BatchPredict(KeyedProcessFunction):
    """(shard, line) -> answer lines, a shard's pending lines answered together.

    Keyed state per shard: ``streams`` (sensor -> state bytes, :mod:`runtime.state`) and
    ``pending`` (lines not yet answered; checkpointed, so a restore answers them). A shard
    is flushed ``flush_ms`` after its first pending line (processing time), as soon as it
    holds ``flush_size`` lines, and at the end of a bounded input (its final watermark:
    processing-time timers do not fire then). After a restore, :data:`WAKE` from the route
    sets a timer for every shard that holds restored lines.
    """

    def __init__(self, model: bytes, spec: LineSpec, missing: str, ttl_seconds: float | None,
                 flush_ms: int, flush_size: int):
        self.model, self.spec, self.missing, self.ttl = model, spec, missing, ttl_seconds
        self.flush_ms, self.flush_size = flush_ms, flush_size
        self.job = self.streams = self.pending = None
        self.counts: dict[int, int] = {}     # shard -> its pending lines (read back lazily)

    def open(self, runtime_context: RuntimeContext):
        self.job = BatchJob(self.model, self.spec, self.missing, self.ttl)
        streams = MapStateDescriptor("streams", Types.STRING(), STATE_TYPE)
        if self.ttl:
            streams.enable_time_to_live(ttl(self.ttl))
        self.streams = runtime_context.get_map_state(streams)
        self.pending = runtime_context.get_list_state(
            ListStateDescriptor("pending", Types.STRING()))

    def process_element(self, value, ctx):
        shard, line = value
        count = self.counts.get(shard)
        restarted = count is None              # first sight since a (re)start: ask the state
        if restarted:
            count = len(list(self.pending.get() or ()))
            self.read_back()
        if line != WAKE:
            self.pending.add(line)
            count += 1
        self.counts[shard] = count
        # A timer for the shard's first pending line; after a restore too: the timers
        # restored with the checkpoint were seen not to fire for every shard (PyFlink 2.3),
        # and the lines restored with the state must not wait on them.
        if count == 1 or (restarted and count):
            timers = ctx.timer_service()
            timers.register_processing_time_timer(timers.current_processing_time()
                                                  + self.flush_ms)
            timers.register_event_time_timer(END_OF_INPUT)
        if count >= self.flush_size:
            yield from self.flush(shard)

    def read_back(self) -> None:
        """Read every sensor's state restored in this shard, in the bundle of the shard's
        first line since a (re)start, so that a checkpoint the backend cannot read (RocksDB's
        block checksum) fails the task there: no later checkpoint can then record the source
        past that line, and each restart reads it again and fails alike, until the job fails.
        Found first in a flush instead, the failure could come after a checkpoint that holds
        every line read and pending, and the restarted job waited for input that never came
        (a restored timer is not sure to fire, see above). Its cost: one read of the shard's
        state per (re)start."""
        for _ in self.streams.values():
            pass

    def on_timer(self, timestamp, ctx):
        yield from self.flush(ctx.get_current_key())

    def flush(self, shard: int):
        lines = list(self.pending.get() or ())
        self.counts[shard] = 0
        if not lines:
            return
        self.pending.clear()
        out, changed = self.job.answer_many(lines, lambda key: self.streams.get(state_key(key)))
        if changed:      # PyFlink iterates (key, value) pairs
            self.streams.put_all([(state_key(key), blob) for key, blob in changed.items()])
        yield from out
