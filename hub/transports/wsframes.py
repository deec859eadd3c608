"""The server's side of RFC 6455 framing: a reader of client frames and the control frames we send.

Data frames we send are built once per event (:func:`sync.events.websocket_frame`); what is here is
what a connection receives — parsed incrementally, as TCP delivers it in pieces of any size — and the
few control frames it answers with.

What the reader enforces (each breach is a :class:`FrameError` carrying the close code to fail the
connection with, RFC 6455 §7.4.1):

- 1002 protocol error: an unmasked client frame (§5.1), reserved bits set (no extension is
  negotiated), an unknown opcode, a fragmented or over-125-byte control frame (§5.5), a continuation
  with no message to continue or a new message inside a fragmented one (§5.4), a close frame whose
  body is one byte or whose code may not be sent (§7.4), a length with its top bit set (§5.2).
- 1007 invalid payload data: a text message, or a close reason, that is not UTF-8 (§8.1).
- 1009 message too big: a message (all its fragments together) longer than ``max_size``, told as soon
  as the header says so — the payload is never buffered first.

Control frames may arrive between the fragments of a message and are returned as they come; a
message is returned once its last fragment is in, with its first frame's opcode.
"""

from __future__ import annotations

import struct

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_FRAGMENTS = 1024  # frames of one message

# Close codes an endpoint may put in a close frame (§7.4.1-2; 1004-1006 and 1015 are reserved and
# never sent, 1012-1014 were registered with IANA later, 3000-4999 are for libraries and apps).
_SENDABLE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009


class FrameError(Exception):
    """The client broke the framing rules: fail the connection with ``code`` (a close code)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (§5.3): one big-integer XOR, not a byte loop."""
    size = len(payload)
    if not size:
        return b""
    key = (mask * ((size + 3) >> 2))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def close_code_of(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a received close frame's body; :class:`FrameError` if it is malformed."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "a close frame's body is a two-byte code and a reason")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _SENDABLE_CLOSE_CODES and not 3000 <= code <= 4999:
        raise FrameError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "a close reason must be UTF-8") from None
    return code, reason


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A whole, unmasked control frame (``payload`` at most 125 bytes, §5.5)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit a control frame, on a character boundary."""
    encoded = reason.encode()[:123].decode(errors="ignore").encode()
    return control_frame(CLOSE, struct.pack("!H", code) + encoded)


class FrameReader:
    """Client frames in, whole messages and control frames out: ``feed`` returns ``(opcode, payload)``
    pairs, payloads unmasked; a text message's payload has been checked to be UTF-8.

    An idle reader holds no buffer of its own (the bytes of an unfinished frame are kept only until
    the rest arrives), so a quiet connection costs a few slots.
    """

    __slots__ = ("_fragments", "_fragments_size", "_message_opcode", "_pending", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._pending: bytearray | None = None  # the start of an unfinished frame
        self._fragments: list[bytes] | None = None  # a fragmented message's frames so far
        self._fragments_size = 0
        self._message_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        pending = self._pending
        buffer: bytes | bytearray = data
        if pending is not None:
            pending += data
            buffer = pending
        end = len(buffer)
        out: list[tuple[int, bytes]] = []
        pos = 0
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            opcode = first & 0x0F
            if first & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits set: no extension was agreed")
            if not second & 0x80:
                raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
            length = second & 0x7F
            head = pos + 2
            if length == 126:
                if end - head < 2:
                    break
                (length,) = struct.unpack_from("!H", buffer, head)
                head += 2
            elif length == 127:
                if end - head < 8:
                    break
                (length,) = struct.unpack_from("!Q", buffer, head)
                if length >> 63:
                    raise FrameError(PROTOCOL_ERROR, "the top bit of a 64-bit length must be 0")
                head += 8
            self._check_header(first, opcode, length)
            start = head + 4
            if end - start < length:
                break
            payload = unmask(buffer[start : start + length], buffer[head:start])
            pos = start + length
            message = self._take(first & 0x80, opcode, payload)
            if message is not None:
                out.append(message)
        # (A FrameError leaves the rest unread: the connection is failed and reads no more.)
        if pos == end:
            self._pending = None
        elif pending is not None:
            del pending[:pos]
        else:
            # An unfinished frame: kept in a bytearray that grows as the rest arrives (a megabyte
            # message in a thousand segments is not copied a thousand times).
            self._pending = bytearray(data[pos:])
        return out

    def _check_header(self, first: int, opcode: int, length: int) -> None:
        if opcode >= CLOSE:
            if opcode > PONG:
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not first & 0x80:
                raise FrameError(PROTOCOL_ERROR, "control frames may not be fragmented")
            if length > 125:
                raise FrameError(PROTOCOL_ERROR, "control frames carry at most 125 bytes")
            return
        if opcode > BINARY:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if opcode == CONTINUATION:
            if self._fragments is None:
                raise FrameError(PROTOCOL_ERROR, "a continuation frame with no message to continue")
            if len(self._fragments) >= MAX_FRAGMENTS:
                # Empty fragments never reach the size limit: without a count, an endless run of them
                # would grow the message's list forever.
                raise FrameError(MESSAGE_TOO_BIG, f"a message is at most {MAX_FRAGMENTS} fragments")
        elif self._fragments is not None:
            raise FrameError(PROTOCOL_ERROR, "a new message before the fragmented one ended")
        if self._fragments_size + length > self.max_size:
            raise FrameError(MESSAGE_TOO_BIG, f"messages are at most {self.max_size} bytes")

    def _take(self, fin: int, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode >= CLOSE:
            return opcode, payload
        if opcode != CONTINUATION:
            if fin:
                return _checked(opcode, payload)
            self._message_opcode = opcode
            self._fragments = [payload]
            self._fragments_size = len(payload)
            return None
        fragments = self._fragments
        assert fragments is not None  # _check_header refused a continuation without a message
        fragments.append(payload)
        self._fragments_size += len(payload)
        if not fin:
            return None
        self._fragments, self._fragments_size = None, 0
        return _checked(self._message_opcode, b"".join(fragments))


def _checked(opcode: int, payload: bytes) -> tuple[int, bytes]:
    if opcode == TEXT:
        try:
            payload.decode()
        except UnicodeDecodeError:
            raise FrameError(INVALID_DATA, "a text message must be UTF-8") from None
    return opcode, payload
