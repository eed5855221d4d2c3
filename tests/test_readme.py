"""Every command in README.md and docs/*.md runs as written, so the manual cannot drift.

The fenced ``sh`` blocks are read from the files themselves (:data:`MANUAL`). A block of
``$ command`` lines is a transcript: the command's stdout must equal the lines below it,
exactly. Any other block is a list of commands (a trailing ``\\`` continues a line), each of
which must exit 0 with nothing on stderr that says ``Error`` or shows a traceback. ``python``
blocks run as scripts.

Each command runs in a scratch copy of the checkout's ``data/`` and ``exported/`` (so the
tracked model is never overwritten), with ``.venv/bin`` first on PATH as the README asks, and
with ``build/water.keras`` already trained there (tiny) for a command that exports it. A
``tail -f`` command never ends by itself: its pipeline is read until its header and ten
lines are answered, then stopped. Commands that cannot run here are listed in
:data:`SKIPPED`, each with its reason. Every relative link between these files must name a
file, and a heading in it, that exist.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime import lines

ROOT = Path(__file__).resolve().parent.parent
MANUAL = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]   # whose commands run
BIN = Path(sys.executable).parent
TIMEOUT = 300

# Command prefix -> what a reader has run before it (in the README's own words), run first.
SET_UP = {
    "sqlite3 water-flow.state.db": "lstm-run exported/water-flow.onnx -i data/water-flow.csv "
                                   "--state water-flow.state.db -o /dev/null",
}

# Command prefix -> why it does not run here.
SKIPPED = {
    "make demo": "creates .venv and reinstalls the project, then runs examples/demo.py (a "
                 "full training run); its steps are the tour's commands, each run here",
    "make test": "runs this test suite (recursion)",
    "import keras": "the tutorial's Keras code, a fragment; tests/test_readme_byo.py and "
                    "tests/test_tutorials.py run it whole",
    "echo '{\"x\"": "'Bring your own Keras model': run in order, in one folder, with the "
                    "airline model it trains, by tests/test_readme_byo.py",
    "lstm-export airline.keras": "run in order by tests/test_readme_byo.py",
    "lstm-run airline.onnx": "run in order by tests/test_readme_byo.py",
    "T, F, H = 24": "the autoencoder and forecaster of 'Bring your own Keras model': "
                    "tests/test_readme_byo.py builds, trains and exports them in order",
    "lstm-export autoencoder.keras": "run in order by tests/test_readme_byo.py",
    "lstm-export forecaster.keras": "run in order by tests/test_readme_byo.py",
    "lstm-run autoencoder.onnx": "run in order by tests/test_readme_byo.py",
    "lstm-run forecaster.onnx": "run in order by tests/test_readme_byo.py",
    "lstm-export flow6.keras": "docs/alerts.md's forecast block, after its Python: run in "
                               "order by tests/test_block_alerts.py",
    "lstm-run flow6.onnx": "run in order by tests/test_block_alerts.py",
    "sudo ": "installs the runtime as root into /opt on a device (the install table's "
             "pip install '.[cpu]', in a venv of its own there)",
    "apt-get install": "installs a system package (CI's .ci/run does it where Java is missing)",
    "make flink-env": "make test builds .venv-flink before it runs these tests",
    ".venv-flink/bin/python -m integrations.flink": "a --watch job runs until it is stopped; "
                                                    "tests/test_flink.py runs the job with "
                                                    "these options on files, kills and "
                                                    "resumes it",
    "flink run": "needs a Flink cluster and a Kafka broker, neither of which runs here",
    "pip install 'lstm-edge[mqtt]'": "installs packages; the dev extra holds paho-mqtt",
    "lstm-run exported/water-flow.onnx --mqtt": "needs an MQTT broker at localhost:1883 with "
                                                "docs/mqtt.md's user; tests/test_mqtt.py runs "
                                                "docs/mqtt.md on a broker it starts",
    "mosquitto_sub -h localhost": "run by tests/test_mqtt.py (see lstm-run --mqtt)",
    "mosquitto_pub -h localhost": "run by tests/test_mqtt.py (see lstm-run --mqtt)",
    "tritonserver": "no Triton server can run here; tests/test_triton.py checks the folder "
                    "it would load against Triton's own ModelConfig and simulates its state",
}


@dataclass
class Command:
    text: str                    # what a user pastes into a shell
    expected: str | None         # a transcript's stdout, or None: exit 0 is enough
    line: int                    # where it is in its file
    language: str = "sh"
    source: str = "README.md"    # the file, relative to the checkout

    @property
    def id(self) -> str:
        return f"{self.source}:L{self.line}:{self.text.split()[0]}"


def readme_commands(text: str, source: str = "README.md") -> list[Command]:
    """The commands of every ``sh`` block (and ``python`` block) of a manual file, in order."""
    commands = []
    for match in re.finditer(r"^```(\w+)\n(.*?)^```", text, re.S | re.M):
        language, body = match.group(1), match.group(2)
        first = text.count("\n", 0, match.start(2)) + 1
        if language == "python":
            commands.append(Command(body, None, first, "python", source))
        elif language == "sh":
            commands += [Command(c.text, c.expected, c.line, "sh", source)
                         for c in _shell_block(body, first)]
    return commands


def _shell_block(body: str, first: int) -> list[Command]:
    rows = body.splitlines()
    transcript = any(r.startswith("$ ") for r in rows)
    out, i = [], 0
    while i < len(rows):
        row, start = rows[i], first + i
        if transcript and not row.startswith("$ "):
            i += 1                                   # output of the command before
            continue
        if not transcript and (not row.strip() or row.lstrip().startswith("#")):
            i += 1
            continue
        text = row[2:] if transcript else row
        while text.endswith("\\") and i + 1 < len(rows):
            i += 1
            text += "\n" + rows[i]
        i += 1
        expected = None
        if transcript:
            seen = []
            while i < len(rows) and not rows[i].startswith("$ "):
                seen.append(rows[i])
                i += 1
            expected = "".join(s + "\n" for s in seen)
        out.append(Command(text, expected, start))
    return out


COMMANDS = [c for path in MANUAL
            for c in readme_commands(path.read_text(), str(path.relative_to(ROOT)))]


def test_the_readme_has_commands_and_transcripts():
    """The extraction itself: the tour, the live example and the transcripts are found."""
    texts = [c.text for c in COMMANDS if c.source == "README.md"]
    assert any(t.startswith("lstm-train ") for t in texts)
    assert any(t.startswith("lstm-export ") for t in texts)
    assert any(t.startswith("tail -n +1 -f ") for t in texts)
    assert sum(c.expected is not None for c in COMMANDS) >= 4
    assert all(c.expected for c in COMMANDS if c.expected is not None)
    sources = {c.source for c in COMMANDS}
    for chapter in ("lstm-run", "mqtt", "keras-models", "alerts", "flink", "triton"):
        assert f"docs/{chapter}.md" in sources        # each chapter's commands are collected


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """What a fresh clone has: data/ and exported/."""
    base = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "data", base / "data")
    shutil.copytree(ROOT / "exported", base / "exported")
    return base


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """build/water.keras (and its sidecar) as the tour's lstm-train writes it, trained tiny."""
    base = tmp_path_factory.mktemp("trained")
    proc = subprocess.run(
        [str(BIN / "lstm-train"), str(ROOT / "data" / "water-flow.csv"), "--target",
         "Water flow [l/s]", "--mode", "sequence", "--look-back", "6", "--units", "4",
         "--epochs", "1", "--quiet", "-o", "build/water.keras"],
        cwd=base, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return base / "build"


@pytest.fixture
def scratch(template, tmp_path) -> Path:
    work = tmp_path / "clone"
    shutil.copytree(template, work)
    return work


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _needs_trainer(text: str) -> bool:
    return text.startswith(("lstm-train", "lstm-export")) or "import keras" in text


@pytest.mark.parametrize("cmd", [    # the trainer's commands import TensorFlow: slow
    pytest.param(c, id=c.id, marks=[pytest.mark.slow] if _needs_trainer(c.text) else [])
    for c in COMMANDS])
def test_readme_command_runs_verbatim(cmd: Command, scratch: Path, request):
    skip = next((why for prefix, why in SKIPPED.items() if cmd.text.startswith(prefix)), None)
    if skip:
        pytest.skip(skip)
    if _needs_trainer(cmd.text) and not shutil.which("lstm-train", path=str(BIN)):
        pytest.skip("the trainer (TensorFlow) is not installed")
    if "build/water.keras" in cmd.text and not cmd.text.startswith("lstm-train"):
        shutil.copytree(request.getfixturevalue("trained"), scratch / "build")
    if cmd.language == "python":
        script = scratch / "readme_block.py"
        script.write_text(cmd.text)
        proc = subprocess.run([sys.executable, str(script)], cwd=scratch, env=_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        return
    if cmd.text.startswith("tail "):
        _run_tail(cmd, scratch)
        return
    for prefix, before in SET_UP.items():
        if cmd.text.startswith(prefix):
            subprocess.run(["bash", "-c", before], cwd=scratch, env=_env(), check=True,
                           capture_output=True, timeout=TIMEOUT)
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd.text], cwd=scratch, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{cmd.id}: exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr, proc.stderr
    if cmd.expected is not None:
        assert proc.stdout == cmd.expected, f"{cmd.id} shows other output"


def _run_tail(cmd: Command, scratch: Path, answers: int = 11) -> None:
    """A ``tail -f`` pipeline: read the header and ten answers, then stop it."""
    proc = subprocess.Popen(["bash", "-c", cmd.text], cwd=scratch, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    got, deadline = b"", time.monotonic() + 60
    try:
        while got.count(b"\n") < answers and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                got += chunk
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    stderr = proc.stderr.read().decode()
    rows = got.decode().splitlines()
    assert len(rows) >= answers, f"{cmd.id}: {rows}\n{stderr}"
    rows = rows[:answers]                  # tail -n +1 sends the whole file at once
    assert "Traceback" not in stderr and "Error:" not in stderr, stderr
    assert rows[0].endswith(",order,error,input"), rows[0]    # the order check is on
    for row in rows[1:]:
        fields = lines.split_csv(row)
        assert fields[-3:] == ["", "", ""] and fields[-4], row    # fed, a prediction, no error


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives a file's headings (code blocks' ``#`` lines are no headings)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def _links(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return [(t, a) for t, a in re.findall(r"\]\(([^)\s#]*)(?:#([^)\s]*))?\)", text)
            if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("path", MANUAL, ids=[p.name for p in MANUAL])
def test_relative_links_resolve(path: Path):
    """Each relative link of the manual names a file that exists, and a heading in it."""
    broken = []
    for target, anchor in _links(path):
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in _anchors(file.read_text()):
            broken.append(f"{target}#{anchor}: no such heading")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)
