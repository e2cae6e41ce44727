"""A carrier for outbound calls (development code): a sipp UAS on loopback standing in for the carrier an outbound
trunk dials. The rehearsal (``localenv.rehearse``) and the live call tests use it; the product places calls with
``infra.sipp`` and never answers them, so this is not in the wheel."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from infra.sipp import SDP_PCMU, sipp_binary

_REPLY = """SIP/2.0 {status}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
{extra}Content-Length: {length}
"""


def _send(status: str, extra: str = "", sdp: bool = False, attrs: str = "") -> str:
    text = _REPLY.format(status=status, extra=extra, length="[len]" if sdp else "0") + ("\n" + SDP_PCMU if sdp else "")
    return f"<send{attrs}><![CDATA[\n{text}\n]]></send>"


def uas_scenario(auth: tuple[str, str] | None) -> str:
    """INVITE -> (401 challenge, ACK, INVITE with valid credentials or 403) -> 200 OK -> ACK -> BYE -> 200."""
    contact = "Contact: <sip:carrier@[local_ip]:[local_port]>\nContent-Type: application/sdp\n"
    steps = ['<recv request="INVITE" crlf="true"/>']
    if auth:
        steps += [
            _send("401 Unauthorized", 'WWW-Authenticate: Digest realm="carrier.test", nonce="[pid]n[call_number]"\n'),
            '<recv request="ACK"/>',
            f'<recv request="INVITE" check_it="true"><action><verifyauth assign_to="authvalid" username="{auth[0]}" '
            f'password="{auth[1]}"/></action></recv>',
            '<nop hide="true" test="authvalid" next="good"/>',
            _send("403 Forbidden", attrs=' next="refused"'),
            '<label id="good"/>',
        ]
    steps += [
        _send("180 Ringing"),
        _send("200 OK", contact, sdp=True, attrs=' retrans="500"'),
        '<recv request="ACK" crlf="true"/>',
        '<recv request="BYE"/>',
        _send("200 OK"),
        '<label id="refused"/>',
        '<nop display="done"/>',
    ]
    body = "\n  ".join(steps)
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="carrier">\n  {body}\n</scenario>\n'


@dataclass
class Carrier:
    """A running carrier UAS on 127.0.0.1:<port> that takes one call."""

    port: int
    auth: tuple[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="carrier-")
    )

    @property
    def work(self) -> Path:
        """The UAS's working folder (its scenario and message trace)."""
        return Path(self._tmp.name)

    def start(self) -> Carrier:
        """Start listening on 127.0.0.1:<port> for one call."""
        (self.work / "uas.xml").write_text(uas_scenario(self.auth))
        argv = [sipp_binary(), "-sf", "uas.xml", "-i", "127.0.0.1", "-p", str(self.port), "-m", "1", "-nostdin",
                "-trace_msg", "-trace_err", "-timeout", "120"]  # fmt: skip
        with (self.work / "sipp.stderr").open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=self.work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err)  # fmt: skip
        return self

    def messages(self) -> str:
        """Every SIP message the UAS sent and received so far (sipp's trace)."""
        return "\n".join(p.read_text(errors="replace") for p in self.work.glob("*_messages.log"))

    def invites(self) -> list[str]:
        """Call-IDs of the INVITEs received (one per dial attempt; a challenged dial sends two, same Call-ID)."""
        ids = re.findall(r"(?ms)^INVITE sip:.*?^Call-ID:\s*(\S+)", self.messages())
        return sorted(set(ids))

    def wait(self, timeout: float) -> int | None:
        """Wait for the call to end (the UAS exits after one call); terminate after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            return None

    def close(self) -> None:
        """Stop the UAS if it still runs and remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._tmp.cleanup()
