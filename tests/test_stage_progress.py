"""The quickstart's live stage progress: every byte to the log, the latest line on the console."""
import io
import os
import re
import shlex
import sys
import threading
import time

import pytest

from distill.quickstart import LiveLine, Stages, follow_output


class Recorder:
    """A display that keeps every line it is given and never has one pending."""

    def __init__(self):
        self.lines = []

    def update(self, line):
        self.lines.append(line)

    def due(self):
        return None

    def refresh(self):
        pass


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def follow(pieces, display):
    """``pieces`` written to a pipe one by one (a pause between, so reads see them apart) while
    ``follow_output`` reads it; returns what reached the log."""
    read_fd, write_fd = os.pipe()

    def write():
        for piece in pieces:
            os.write(write_fd, piece)
            time.sleep(0.02)
        os.close(write_fd)

    writer = threading.Thread(target=write)
    writer.start()
    log = io.BytesIO()
    try:
        follow_output(read_fd, log, display)
    finally:
        writer.join()
        os.close(read_fd)
    return log.getvalue()


def test_follow_output_logs_every_byte_and_passes_on_the_latest_lines():
    data = b"step 1\rstep 2\rstep 3\nend\n"
    display = Recorder()
    assert follow([data], display) == data
    assert display.lines[-1] == "end"
    assert {"step 1", "step 2", "step 3", "end"} <= set(display.lines)
    assert display.lines.index("step 3") < display.lines.index("end")


def test_follow_output_does_not_wait_for_a_newline_and_joins_pieces():
    # a carriage-return update is passed on as soon as it is read, then the same line completed;
    # a "\r\n" and a UTF-8 character split across reads; a last line with no newline
    pieces = [b"\rtraining:  10%|", b"# | 1/10 [loss=0.5]", b"\r", b"\nsamples_s=3 \xc3", b"\xa9t\xc3\xa9\n", b"tail"]
    display = Recorder()
    assert follow(pieces, display) == b"".join(pieces)
    assert "training:  10%|" in display.lines  # the piece before the rest of its line arrived
    assert "training:  10%|# | 1/10 [loss=0.5]" in display.lines
    assert "samples_s=3 \u00e9t\u00e9" in display.lines
    assert not any("\ufffd" in line or "\r" in line or "\n" in line for line in display.lines)
    assert display.lines[-1] == "tail"


def test_on_a_terminal_the_line_is_redrawn_in_place_cut_to_the_width_and_throttled(monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    clock, term = Clock(), Terminal()
    line = LiveLine("teacher", term, clock)
    line.update("  step 1 \x1b[A")  # padding and cursor movement never reach the console
    assert term.getvalue() == "\r[teacher] step 1\x1b[K"
    clock.now += 1
    line.update("step 1")  # the same line again (completed after it was shown): not redrawn
    line.update("  ")
    assert term.getvalue() == "\r[teacher] step 1\x1b[K" and line.due() is None
    line.update("step 1b")
    line.update("step 2")  # too soon after the last draw: kept pending
    assert term.getvalue().count("\r") == 2 and line.due() == pytest.approx(0.25)
    clock.now += 0.3
    assert line.due() == 0
    line.update("step 3 " + "x" * 100)
    drawn = term.getvalue().split("\r")[-1]
    assert drawn.startswith("[teacher] step 3 x") and drawn.endswith("\x1b[K") and len(drawn) == 29 + 3
    line.clear()
    assert term.getvalue().endswith("\r\x1b[K") and not line.drawn


def test_elsewhere_a_plain_line_at_most_every_30_seconds():
    clock, out = Clock(), io.StringIO()
    line = LiveLine("teacher", out, clock)
    line.update("step 1")
    clock.now += 10
    line.update("step 2")
    assert out.getvalue() == ""  # a stage shorter than 30 s adds nothing
    clock.now += 20
    assert line.due() == 0
    line.refresh()
    assert out.getvalue() == "[teacher] step 2\n"
    clock.now += 29
    line.update("step 3")
    line.refresh()
    assert out.getvalue() == "[teacher] step 2\n"
    clock.now += 1
    line.update("step 4")
    line.clear()
    assert out.getvalue() == "[teacher] step 2\n[teacher] step 4\n"
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


PROGRESS = ("import sys, time\n"
            "print('starting', flush=True)\n"
            "for i in range(1, 4):\n"
            "    sys.stderr.write(f'\\rstep {i}/3 loss=0.{i}'); sys.stderr.flush(); time.sleep(0.05)\n"
            "sys.stderr.write('\\n')\n"
            "print('end')\n")
PROGRESS_OUTPUT = b"starting\n\rstep 1/3 loss=0.1\rstep 2/3 loss=0.2\rstep 3/3 loss=0.3\nend\n"


def test_a_stage_process_output_goes_to_its_log_and_no_carriage_return_to_a_non_terminal(tmp_path, capsys):
    stages, cmd = Stages(tmp_path), [sys.executable, "-c", PROGRESS]
    stages.run("tiny", cmd)
    assert (tmp_path / "logs" / "tiny.log").read_bytes() == PROGRESS_OUTPUT
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    # a stage shorter than 30 s: the command and the time, nothing else
    assert re.fullmatch(re.escape(f"[tiny] {shlex.join(cmd)}\n") + r"\[tiny\] done in \d+ s\n", out)
    assert stages.times["tiny"] > 0
    assert "-c" in (tmp_path / "commands.sh").read_text()


def test_a_stage_process_on_a_terminal_shows_a_live_line_then_clears_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", Terminal())
    Stages(tmp_path).run("tiny", [sys.executable, "-c", PROGRESS])
    out = sys.stdout.getvalue()
    assert "\r[tiny] starting\x1b[K" in out  # the first line is drawn at once
    assert re.search(r"\r\x1b\[K\[tiny\] done in \d+ s\n\Z", out)  # the live line wiped, then the usual line
    assert (tmp_path / "logs" / "tiny.log").read_bytes() == PROGRESS_OUTPUT


def test_a_failing_stage_exits_with_the_end_of_its_log(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"stage 'broken' failed \(exit 3\)[^\n]*\n.*half done") as failure:
        Stages(tmp_path).run("broken", [sys.executable, "-c", "import sys; print('half done'); sys.exit(3)"])
    assert "Traceback" not in str(failure.value)
    assert (tmp_path / "logs" / "broken.log").read_text() == "half done\n"
    assert "done in" not in capsys.readouterr().out
