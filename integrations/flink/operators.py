"""The two Python functions of the Flink job: route a line to its sensor, answer it.

Both load what they need once per task, in ``open()``: the model's bytes travel with the
function (pickled into the job), so a TaskManager needs no copy of the file.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from .records import LineJob, LineSpec

STATE_TYPE = Types.PICKLED_BYTE_ARRAY()   # one sensor's stream: codec.StateCodec bytes
ROUTED = Types.TUPLE([Types.STRING(), Types.STRING()])   # (sensor, line)


class Route(FlatMapFunction):
    """line -> (sensor, line); a CSV header line is dropped, a bad line goes to sensor ""."""

    def __init__(self, model: bytes, spec: LineSpec, missing: str):
        self.model, self.spec, self.missing = model, spec, missing
        self.job = None

    def open(self, runtime_context: RuntimeContext):
        self.job = LineJob(self.model, self.spec, self.missing)

    def flat_map(self, value):
        key = self.job.key(value)
        if key is not None:
            yield key, value


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
            descriptor.enable_time_to_live(
                StateTtlConfig.new_builder(Time.milliseconds(int(self.ttl * 1000)))
                .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
                .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                .build())
        self.state = runtime_context.get_state(descriptor)

    def process_element(self, value, ctx):
        out, blob = self.job.answer(value[1], self.state.value(), value[0])
        if blob is not None:
            self.state.update(blob)
        yield out
