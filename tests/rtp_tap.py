"""What a SIP caller hears: the RTP that reaches sipp's media port on loopback, read off the wire.

sipp streams the caller's audio but keeps none of what it receives, so the tap reads the loopback interface itself
(a raw ``AF_PACKET`` socket: root, as ``./dev`` runs) and keeps each UDP packet to sipp's media ports that is RTP
(version 2). PCMU payloads decode to 16-bit samples (G.711 mu-law, ITU-T's table), so a test can tell the agent's
speech from silence at the caller and time its first sound.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import threading
import time
from collections.abc import Container
from dataclasses import dataclass
from types import TracebackType

ETH_P_ALL = 0x0003
SIPP_MEDIA_PORTS = range(6000, 6100)  # sipp's media port (-mp) is 6000, the next free one when taken
PCMU = 0


def _ulaw_table() -> list[int]:
    out = []
    for byte in range(256):
        u = ~byte & 0xFF
        sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
        magnitude = ((mantissa << 3) + 0x84) << exponent
        out.append(-(magnitude - 0x84) if sign else magnitude - 0x84)
    return out


ULAW = _ulaw_table()


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet to a watched port (by default: one the caller received)."""

    at: float  # time.monotonic() when read
    dst_port: int
    payload_type: int
    sequence: int
    timestamp: int
    payload: bytes

    @property
    def rms(self) -> float:
        """The packet's loudness (RMS of its decoded 16-bit samples; 0 for a payload that is not PCMU)."""
        if self.payload_type != PCMU or not self.payload:
            return 0.0
        return math.sqrt(sum(ULAW[b] ** 2 for b in self.payload) / len(self.payload))


class RtpTap:
    """Records the RTP packets sent to sipp's media ports on ``lo`` while open (a context manager). With other
    ``ports`` (e.g. sipp's and livekit-sip's RTP ports together), the packets sent to those: ``dst_port`` tells
    what the caller heard from what it said."""

    def __init__(self, ports: Container[int] = SIPP_MEDIA_PORTS) -> None:
        self.ports = ports
        self._packets: list[RtpPacket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RtpTap:
        if os.geteuid() != 0:
            raise PermissionError("the RTP tap reads the loopback interface raw: run the tests as root (./dev does)")
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, name="rtp-tap", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()

    def packets(self, since: float = 0.0) -> list[RtpPacket]:
        """The packets read at or after ``since`` (monotonic), in order."""
        with self._lock:
            return [p for p in self._packets if p.at >= since]

    def _read(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == socket.PACKET_OUTGOING:
                continue  # every loopback packet is seen twice: keep the incoming copy
            packet = self._rtp(frame)
            if packet is not None:
                with self._lock:
                    self._packets.append(packet)

    def _rtp(self, frame: bytes) -> RtpPacket | None:
        """The RTP packet in an Ethernet frame (IPv4, UDP, to a watched port), else None."""
        if len(frame) < 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
            return None
        ip = frame[14:]
        header_len = (ip[0] & 0x0F) * 4
        if ip[9] != socket.IPPROTO_UDP:
            return None
        _, dst_port, length, _ = struct.unpack("!HHHH", ip[header_len : header_len + 8])
        if dst_port not in self.ports:
            return None
        rtp = ip[header_len + 8 : header_len + length]
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            return None
        count = rtp[0] & 0x0F
        sequence, timestamp = struct.unpack("!HI", rtp[2:8])
        payload = rtp[12 + 4 * count :]
        return RtpPacket(time.monotonic(), dst_port, rtp[1] & 0x7F, sequence, timestamp, payload)


def first_sound(packets: list[RtpPacket], threshold: float = 500.0) -> RtpPacket | None:
    """The first packet louder than ``threshold`` (RMS of 16-bit samples: speech is thousands, comfort noise tens)."""
    return next((p for p in packets if p.rms > threshold), None)


def loud_seconds(packets: list[RtpPacket], threshold: float = 500.0) -> float:
    """Seconds of PCMU audio louder than ``threshold`` (8,000 samples a second)."""
    return sum(len(p.payload) for p in packets if p.payload_type == PCMU and p.rms > threshold) / 8000
