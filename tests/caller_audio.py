"""A caller's spoken sentence as the RTP payload sipp plays: raw 8 kHz mu-law, made with espeak-ng and sox."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def spoken_ulaw(work: Path, sentence: str, *, silence_after_s: int = 60) -> Path:
    """``sentence`` spoken, then ``silence_after_s`` of silence: RTP keeps flowing, as from a real phone (the bridge
    ends calls whose media stops)."""
    missing = [b for b in ("espeak-ng", "sox") if shutil.which(b) is None]
    assert not missing, f"not installed: {missing}; run `./dev setup` (Debian packages espeak-ng and sox)"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(work / "says.wav"), sentence], check=True)
    out = work / "caller.ulaw"
    subprocess.run(["sox", str(work / "says.wav"), "-r", "8000", "-c", "1", "-e", "u-law", "-t", "raw", str(out),
                    "pad", "0", str(silence_after_s)], check=True)  # fmt: skip
    return out
