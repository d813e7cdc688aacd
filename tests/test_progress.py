"""Logs and signals as a user sees them: progress in a log file or CI log (not a terminal), ``--no-progress`` on a
terminal, and Ctrl-C on ``interp serve``."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from interp.progress import LogBar, progress_bar

TORCH_THREADS = 1
ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_log_bar_writes_readable_lines(caplog):
    caplog.set_level(logging.INFO, logger="interp.progress")
    bar = LogBar(total=4000, desc="cache", unit="tok", unit_scale=True, interval=0.05)
    for _ in range(4):
        time.sleep(0.06)
        bar.update(1000)
    bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "interp.progress"]
    assert 3 <= len(lines) <= 5, lines
    line = re.compile(r"cache: +\d+% [\d.]+k?/4\.00k tok \[[\d:]+<[\d:?]+, [\d.]+k? ?tok/s\]")
    assert all(line.fullmatch(ln) for ln in lines), lines
    assert lines[-1].startswith("cache: 100% 4.00k/4.00k tok")


def test_disabled_bar_shows_nothing(capsys):
    bar = progress_bar(10, "x", enabled=False)
    bar.update(10)
    bar.close()
    assert capsys.readouterr().err == ""


def _cache_argv(model_dir: Path, corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cli.main", "cache", "--model", str(model_dir), "--corpus", str(corpus),
            "--hooks", HOOK, "--n-tokens", "2048", "--ctx-len", "32", "--batch-size", "1", "--shard-mb", "0.05",
            "--out", str(out)]


def test_progress_in_a_log_file_is_periodic_lines(tiny_model_dir, corpus_dir, tmp_path):
    """Standard error is a file: no carriage returns, no library bars, one line per interval."""
    log_file = tmp_path / "cache.log"
    with open(log_file, "w") as f:
        subprocess.run(_cache_argv(tiny_model_dir, corpus_dir, tmp_path / "s"), stderr=f, stdout=subprocess.DEVNULL,
                       env={**ENV, "INTERP_PROGRESS_SECONDS": "0.01"}, cwd=ROOT, check=True, timeout=300)
    text = log_file.read_text()
    assert "\r" not in text, text[:2000]
    assert "Loading weights" not in text
    lines = [ln for ln in text.splitlines() if "interp.progress: cache:" in ln]
    assert len(lines) >= 2, text
    assert all(len(ln) < 200 and "tok/s" in ln for ln in lines), lines
    assert "100%" in lines[-1]


def _run_on_terminal(argv: list[str], timeout: float = 300) -> str:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; returns everything it wrote there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing at 0 columns
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    os.close(follower)
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_no_progress_on_a_terminal_hides_every_bar(tiny_model_dir, corpus_dir, tmp_path):
    shown = _run_on_terminal(_cache_argv(tiny_model_dir, corpus_dir, tmp_path / "shown"))
    assert "\rcache: 100%|" in shown and "tok/s" in shown, shown  # a terminal still gets tqdm's bar
    quiet = _run_on_terminal([*_cache_argv(tiny_model_dir, corpus_dir, tmp_path / "quiet"), "--no-progress"])
    assert "Loading weights" not in quiet and "cache:" not in quiet and "\r" not in quiet.replace("\r\n", "\n"), quiet
    assert "2048 rows" in quiet


@pytest.fixture(scope="module")
def served(tiny_model_dir, corpus_dir, tmp_path_factory):
    """A saved (untrained) dictionary and its feature store, for ``interp serve``."""
    from interp.activations import CacheConfig, cache_activations
    from interp.dictionaries import create, save_dictionary
    from interp.features import AnalyzeConfig, analyze_features
    from interp.model import CorpusConfig

    root = tmp_path_factory.mktemp("serve")
    store = cache_activations(CacheConfig(model=str(tiny_model_dir), hooks=(HOOK,), n_tokens=512, ctx_len=32,
                                          corpus=CorpusConfig(source=str(corpus_dir))), root / "store", progress=False)
    d = create("relu", 32, 64, hook_in=HOOK, model_name=str(tiny_model_dir),
               model_fingerprint=store.model["fingerprint"])
    save_dictionary(d, root / "sae")
    analyze_features(d, store, root / "features", AnalyzeConfig(), progress=False)
    return root


def _sigint_default() -> None:
    """In the child: Ctrl-C's default disposition. A test run started in the background (``make test &``) ignores
    SIGINT, children inherit that, and Python then installs no KeyboardInterrupt handler: the signal would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_serve_cleanly(served):
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--features", str(served / "features"),
                             "--dictionary", str(served / "sae"), "--port", "0", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                            preexec_fn=_sigint_default)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("serving "), (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "resume" not in err and "Traceback" not in err, err
    assert "Loading weights" not in err
