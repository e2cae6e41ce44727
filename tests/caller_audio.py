"""A caller's spoken sentence, made with espeak-ng and sox: as the RTP payload sipp plays (raw 8 kHz mu-law), or as
the 16-bit PCM a test pushes into a speech-to-text stream."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _spoken_wav(work: Path, sentence: str) -> Path:
    missing = [b for b in ("espeak-ng", "sox") if shutil.which(b) is None]
    assert not missing, f"not installed: {missing}; run `./dev setup` (Debian packages espeak-ng and sox)"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(work / "says.wav"), sentence], check=True)
    return work / "says.wav"


def spoken_ulaw(work: Path, sentence: str, *, silence_after_s: int = 60) -> Path:
    """``sentence`` spoken, then ``silence_after_s`` of silence: RTP keeps flowing, as from a real phone (the bridge
    ends calls whose media stops)."""
    out = work / "caller.ulaw"
    subprocess.run(["sox", str(_spoken_wav(work, sentence)), "-r", "8000", "-c", "1", "-e", "u-law", "-t", "raw",
                    str(out), "pad", "0", str(silence_after_s)], check=True)  # fmt: skip
    return out


def spoken_pcm16(work: Path, sentence: str, *, sample_rate: int = 16000) -> bytes:
    """``sentence`` spoken, as mono 16-bit signed little-endian PCM at ``sample_rate`` (no silence added)."""
    out = work / f"says-{sample_rate}.raw"
    subprocess.run(["sox", str(_spoken_wav(work, sentence)), "-r", str(sample_rate), "-c", "1", "-b", "16",
                    "-e", "signed-integer", "-L", "-t", "raw", str(out)], check=True)  # fmt: skip
    return out.read_bytes()
