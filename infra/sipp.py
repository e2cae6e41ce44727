"""Synthetic phone calls with sipp: one INVITE with a Call-ID of our own, answered, held, hung up with BYE.

The Call-ID is how a call is found again on the LiveKit side: livekit-sip publishes it on the caller's
participant as ``sip.callIDFull``. The caller hangs up by BYE when told to, or answers the far end's BYE
(for example when the room is deleted), so sipp always ends the call by the protocol, never by a kill.

The answering side (a sipp UAS standing in for the carrier an outbound trunk dials) is development code:
``localenv.carrier``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

_TRACE_BLOCK = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d[ \t]\d\d:\d\d:\d\d\.\d+)\n(.*?)(?=^-{20,} |\Z)", re.M | re.S)
_ANSWER = re.compile(r"^SIP/2\.0 200 .*?^CSeq:\s*\d+ INVITE", re.M | re.S)

_HEADERS = """From: <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>{to_tag}
Call-ID: [call_id]
Contact: sip:{caller}@[local_ip]:[local_port]
Max-Forwards: 70"""

SDP_PCMU_DTMF = """v=0
o=siphon 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
"""  # the same offer with RFC 4733 telephone events (payload type 101), for a caller that keys in digits
DTMF_PCAP_TEMPLATE = Path("/usr/share/sip-tester/dtmf_2833_0.pcap")  # sip-tester's recording of digit 0 (PT 101)
_DTMF_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
_RTP_EVENT_OFFSET = 14 + 20 + 8 + 12  # Ethernet, IPv4, UDP and RTP headers before the telephone-event payload

SDP_PCMU = """v=0
o=siphon 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""  # an audio offer or answer in sipp's keywords: one PCMU stream on sipp's media port

_INVITE = (
    """INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
{headers}
CSeq: {cseq} INVITE
{extra}{auth}Content-Type: application/sdp
Content-Length: [len]

"""
    + "{sdp}"
)

_IN_DIALOG = """{method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
{headers}
CSeq: {cseq} {method}
Content-Length: 0
"""

_OK_TO_BYE = """SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0
"""


def from_user(caller: str) -> str:
    """The user part of the caller's From URI: the number without '+' (livekit-sip publishes it as
    ``sip.phoneNumber``, so the agent reports this as the caller's number)."""
    return caller.lstrip("+")


def _cdata(text: str) -> str:
    return f"<![CDATA[\n{text}\n]]>"


@dataclass(frozen=True)
class CallerAudio:
    """What the caller says: raw 8 kHz mu-law (PCMU) audio, played once ``after_s`` seconds into the answered call."""

    path: Path
    after_s: float = 0.0


def scenario(
    caller: str,
    headers: dict[str, str] | None = None,
    *,
    auth: tuple[str, str] | None = None,
    hold_ms: int = 30000,
    audio: CallerAudio | None = None,
    dtmf: str = "",
) -> str:
    """A sipp UAC scenario: INVITE (PCMU) from ``caller`` with extra headers, answer a digest challenge with
        ``auth`` (username, password) when given, then (with ``audio``) speak, hold until the far end sends BYE or
        ``hold_ms`` passes, and hang up with BYE. With ``dtmf``, the caller keys in those digits (RFC 4733 events, one
    ``dtmf_<i>.pcap`` each, see ``dtmf_pcaps``) one second after the answer. Credentials live only in the scenario file,
    never on a command line."""
    sdp = SDP_PCMU_DTMF if dtmf else SDP_PCMU
    extra = "".join(f"{k}: {v}\n" for k, v in (headers or {}).items())
    common = {"caller": from_user(caller)}
    dialog = _HEADERS.format(to_tag="", **common)
    answered = _HEADERS.format(to_tag="[peer_tag_param]", **common)

    def invite(cseq: int, auth_line: str) -> str:
        return _cdata(_INVITE.format(headers=dialog, cseq=cseq, extra=extra, auth=auth_line, sdp=sdp))

    steps = [f'<send retrans="500">{invite(1, "")}</send>',
             '<recv response="100" optional="true"/>']  # fmt: skip
    if auth:
        steps += [
            '<recv response="401" optional="true" auth="true" next="auth"/>',
            '<recv response="407" optional="true" auth="true" next="auth"/>',
        ]
    steps += [
        '<recv response="180" optional="true"/>',
        '<recv response="183" optional="true"/>',
        '<recv response="200" rtd="true" next="answered"/>',
    ]
    if auth:
        credentials = f"[authentication username={auth[0]} password={auth[1]}]\n"
        steps += [
            '<label id="auth"/>',
            f"<send>{_cdata(_IN_DIALOG.format(method='ACK', headers=answered, cseq=1))}</send>",
            f'<send retrans="500">{invite(2, credentials)}</send>',
            '<recv response="100" optional="true"/>',
            '<recv response="180" optional="true"/>',
            '<recv response="183" optional="true"/>',
            '<recv response="200" rtd="true"/>',
        ]
    cseq = 2 if auth else 1
    steps += [
        '<label id="answered"/>',
        f"<send>{_cdata(_IN_DIALOG.format(method='ACK', headers=answered, cseq=cseq))}</send>",
    ]
    if dtmf:  # each digit's recording is replayed from sipp's media port, 300 ms apart
        steps.append('<pause milliseconds="1000"/>')
        for i in range(len(dtmf)):
            steps += [f'<nop><action><exec play_pcap_audio="dtmf_{i}.pcap"/></action></nop>',
                      '<pause milliseconds="300"/>']  # fmt: skip
    if audio:  # sipp streams the file as RTP (payload type 0) in the background; the wait for BYE starts at once
        steps += [
            f'<pause milliseconds="{int(audio.after_s * 1000)}"/>',
            f'<nop><action><exec rtp_stream="{audio.path.name},1,0"/></action></nop>',
        ]
    steps += [
        f'<recv request="BYE" timeout="{hold_ms}" ontimeout="hangup"/>',
        f'<send next="done">{_cdata(_OK_TO_BYE)}</send>',
        '<label id="hangup"/>',
        f'<send retrans="500">{_cdata(_IN_DIALOG.format(method="BYE", headers=answered, cseq=cseq + 1))}</send>',
        '<recv response="200" crlf="true"/>',
        '<label id="done"/>',
        '<nop display="call ended"/>',
    ]
    body = "\n  ".join(steps)
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="siphon-call">\n  {body}\n</scenario>\n'


def dtmf_pcaps(digits: str) -> list[bytes]:
    """One pcap per digit (0-9, *, #) for sipp's ``play_pcap_audio``: sip-tester's recording of digit 0 with the
    event code of each RTP packet set to the digit's."""
    if not digits:
        return []
    if unknown := set(digits) - set(_DTMF_EVENTS):
        raise ValueError(f"not DTMF digits: {''.join(sorted(unknown))}")
    if not DTMF_PCAP_TEMPLATE.exists():
        raise SippMissing(f"{DTMF_PCAP_TEMPLATE} is missing: install the Debian package sip-tester")
    template = DTMF_PCAP_TEMPLATE.read_bytes()
    out = []
    for i, digit in enumerate(digits):
        data, at = bytearray(template), 24  # after the pcap file header
        while at + 16 <= len(data):
            length = int.from_bytes(data[at + 8 : at + 12], "little")
            if length > _RTP_EVENT_OFFSET:
                rtp = at + 16 + _RTP_EVENT_OFFSET - 12
                data[rtp + 12] = _DTMF_EVENTS[digit]
                # A new event per digit: its own sequence numbers and timestamp (a receiver drops repeats of one)
                seq = (int.from_bytes(data[rtp + 2 : rtp + 4], "big") + 100 * i) % 2**16
                stamp = (int.from_bytes(data[rtp + 4 : rtp + 8], "big") + 8000 * i) % 2**32
                data[rtp + 2 : rtp + 4], data[rtp + 4 : rtp + 8] = seq.to_bytes(2, "big"), stamp.to_bytes(4, "big")
            at += 16 + length
        out.append(bytes(data))
    return out


class SippMissing(RuntimeError):
    """sipp is not installed."""


def sipp_binary() -> str:
    """Path of sipp, or SippMissing saying how to install it."""
    found = shutil.which("sipp")
    if not found:
        raise SippMissing("sipp is not installed: install the Debian package sip-tester (`apt-get install sip-tester`)")
    return found


@dataclass
class CallEnd:
    """How a synthetic call ended, as sipp saw it."""

    completed: bool  # the call was answered and ended by BYE
    exit_code: int | None
    reason: str  # empty when completed; else the first SIP status or sipp error
    answered_after: float | None = None  # seconds from the first INVITE sent to the 200 OK received


@dataclass
class SippCall:
    """One running synthetic call (a sipp process placing one INVITE)."""

    call_id: str
    number: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    started: float  # time.monotonic() when the INVITE went out
    _tmp: tempfile.TemporaryDirectory[str] = field(repr=False)
    _end: CallEnd | None = field(default=None, repr=False)

    def running(self) -> bool:
        """True while sipp has not exited (ringing, answered or held)."""
        return self.proc.poll() is None

    def wait(self, timeout: float) -> CallEnd:
        """Wait for sipp to end the call (answered BYE or refusal); terminate it only after ``timeout``."""
        if self._end is not None:
            return self._end
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self._end = CallEnd(False, self.proc.returncode, f"the call did not end within {timeout:.0f}s")
        else:
            code = self.proc.returncode
            self._end = CallEnd(code == 0, code, "" if code == 0 else self.failure())
        self._end.answered_after = self.time_to_answer()
        self._tmp.cleanup()
        return self._end

    def time_to_answer(self) -> float | None:
        """Seconds from the first INVITE sent to the 200 OK that answered it, from sipp's message trace."""
        text = "\n".join(p.read_text(errors="replace") for p in self.workdir.glob("*_messages.log"))
        sent = answered = None
        for stamp, body in _TRACE_BLOCK.findall(text):
            at = datetime.strptime(stamp.replace("\t", " "), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            if sent is None and "message sent" in body and "\nINVITE sip:" in body:
                sent = at
            elif sent is not None and "message received" in body and _ANSWER.search(body):
                answered = at
                break
        return answered - sent if sent is not None and answered is not None else None

    def failure(self) -> str:
        """Why sipp failed the call: the first unexpected SIP status, a time-out, or sipp's own message."""
        logs = [*sorted(self.workdir.glob("*_errors.log")), self.workdir / "sipp.stderr"]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
        if m := re.search(r"received '(SIP/2\.0 \d{3}[^\r\n']*)", text):
            return f"refused: {m.group(1).removeprefix('SIP/2.0 ')}"
        if "timeout" in text.lower() or "timed out" in text.lower():
            return "no answer from the SIP bridge (the INVITE was dropped or timed out)"
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1][:300] if lines else f"sipp exited {self.proc.returncode}"


def place(
    sip_address: str,
    number: str,
    *,
    caller: str,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    source_ip: str | None = "127.0.0.1",
    hold_s: float = 30.0,
    answer_timeout_s: float = 20.0,
    audio: CallerAudio | None = None,
    dtmf: str = "",
) -> SippCall:
    """Start one synthetic call to ``number`` through the bridge at ``sip_address`` (host:port, UDP); with
    ``audio`` the caller speaks (see ``CallerAudio``)."""
    sipp = sipp_binary()
    tmp = tempfile.TemporaryDirectory(prefix="siphon-sipp-")
    work = Path(tmp.name)
    call_id = f"siphon-{uuid.uuid4().hex}"
    (work / "uac.xml").write_text(
        scenario(caller, headers, auth=auth, hold_ms=int(hold_s * 1000), audio=audio, dtmf=dtmf)
    )
    if audio:
        shutil.copyfile(audio.path, work / audio.path.name)
    for i, pcap in enumerate(dtmf_pcaps(dtmf)):
        (work / f"dtmf_{i}.pcap").write_bytes(pcap)
    argv = [
        sipp, "-sf", "uac.xml", "-s", number, *(["-i", source_ip] if source_ip else []), "-m", "1",
        "-cid_str", call_id, "-nostdin", "-trace_err", "-trace_msg", "-recv_timeout", str(int(answer_timeout_s * 1000)),
        "-timeout", str(int(hold_s + answer_timeout_s + 10)), "-timeout_error",
    ]  # fmt: skip
    argv.append(sip_address)
    with (work / "sipp.stderr").open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return SippCall(call_id, number, proc, work, started, tmp)
