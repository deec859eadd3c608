"""hub/transports/wsframes.py: the RFC 6455 reader on its own — whole messages out of a byte stream cut
anywhere, and every framing fault told with its close code."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.transports.wsframes import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    close_code_of,
    close_frame,
    control_frame,
    unmask,
)
from tests.realtime_helpers import client_frame

LIMIT = 1 << 20


def read_all(data: bytes, limit: int = LIMIT) -> list[tuple[int, bytes]]:
    return FrameReader(limit).feed(data)


def fault(data: bytes, limit: int = LIMIT) -> int:
    with pytest.raises(FrameError) as caught:
        FrameReader(limit).feed(data)
    return caught.value.code


# -- what comes out ----------------------------------------------------------------------------------


def test_a_masked_text_frame_comes_out_unmasked():
    assert read_all(client_frame(TEXT, b'{"type":"ping"}')) == [(TEXT, b'{"type":"ping"}')]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_every_length_encoding_reads_back(size):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert read_all(client_frame(BINARY, payload)) == [(BINARY, payload)]


def test_a_fragmented_message_comes_out_once_whole_with_its_first_frames_opcode_and_pings_in_between():
    stream = (
        client_frame(TEXT, b"hel", fin=False)
        + client_frame(PING, b"p1")
        + client_frame(CONTINUATION, b"lo ", fin=False)
        + client_frame(PONG, b"")
        + client_frame(CONTINUATION, b"world")
    )
    assert read_all(stream) == [(PING, b"p1"), (PONG, b""), (TEXT, b"hello world")]


def test_a_character_split_between_fragments_is_valid_utf8():
    snowman = "☃".encode()
    stream = client_frame(TEXT, snowman[:1], fin=False) + client_frame(CONTINUATION, snowman[1:])
    assert read_all(stream) == [(TEXT, snowman)]


messages = st.lists(
    st.tuples(
        st.sampled_from([TEXT, BINARY, PING]),
        st.binary(max_size=300),
        st.integers(min_value=1, max_value=4),  # fragments (data messages only)
    ),
    max_size=8,
)


def frames_of(opcode: int, payload: bytes, parts: int) -> tuple[bytes, bytes]:
    if opcode == TEXT:
        payload = payload.decode("latin-1").encode()  # valid UTF-8 of the same length class
    if opcode == PING:
        payload = payload[:125]
        return client_frame(PING, payload), payload
    cut = [len(payload) * i // parts for i in range(parts + 1)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(cut)]
    stream = b"".join(
        client_frame(opcode if i == 0 else CONTINUATION, piece, fin=i == parts - 1)
        for i, piece in enumerate(pieces)
    )
    return stream, payload


@given(messages, st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_messages_come_out_whole_and_in_order_however_the_stream_is_cut(sent, cuts):
    stream = b""
    expected = []
    for opcode, payload, parts in sent:
        frames, body = frames_of(opcode, payload, parts)
        stream += frames
        expected.append((opcode, body))
    reader = FrameReader(LIMIT)
    got = []
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        got += reader.feed(stream[start:end])
    assert got == expected


def test_a_stream_fed_one_byte_at_a_time_reads_the_same():
    stream = client_frame(TEXT, b"x" * 300) + client_frame(BINARY, b"y" * 70000)
    reader = FrameReader(LIMIT)
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i : i + 1])
    assert got == [(TEXT, b"x" * 300), (BINARY, b"y" * 70000)]


@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_unmask_is_the_bytewise_xor_with_the_repeated_mask(payload, mask):
    assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# -- faults, with the close code each gets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        pytest.param(client_frame(TEXT, b"hi", masked=False), 1002, id="unmasked"),
        pytest.param(client_frame(TEXT, b"hi", rsv=4), 1002, id="rsv1 without an extension"),
        pytest.param(client_frame(TEXT, b"hi", rsv=1), 1002, id="rsv3"),
        pytest.param(client_frame(0x3, b"hi"), 1002, id="reserved data opcode"),
        pytest.param(client_frame(0xB, b""), 1002, id="reserved control opcode"),
        pytest.param(client_frame(PING, b"p", fin=False), 1002, id="fragmented control frame"),
        pytest.param(client_frame(PING, b"p" * 126), 1002, id="control frame over 125 bytes"),
        pytest.param(client_frame(CONTINUATION, b"lo"), 1002, id="continuation of nothing"),
        pytest.param(
            client_frame(TEXT, b"he", fin=False) + client_frame(TEXT, b"llo"),
            1002,
            id="new message inside a fragmented one",
        ),
        pytest.param(client_frame(TEXT, b"\xff\xfe"), 1007, id="text not UTF-8"),
        pytest.param(
            client_frame(TEXT, b"\xe2\x98", fin=False) + client_frame(CONTINUATION, b"x"),
            1007,
            id="fragments not UTF-8 together",
        ),
        pytest.param(
            struct.pack("!BBQ", 0x82, 0xFF, 1 << 63) + b"mask", 1002, id="64-bit length with its top bit"
        ),
    ],
)
def test_framing_faults_get_their_close_code(stream, code):
    assert fault(stream) == code


def test_a_message_over_the_limit_is_refused_from_its_header_before_the_payload_arrives():
    header = client_frame(BINARY, b"z" * 2000)[:8]  # 2 + 2 (length) + 4 (mask): no payload yet
    assert fault(header, limit=1000) == 1009


def test_fragments_over_the_limit_together_are_refused():
    stream = client_frame(BINARY, b"a" * 600, fin=False) + client_frame(CONTINUATION, b"b" * 600)
    assert fault(stream, limit=1000) == 1009
    assert read_all(stream, limit=1200) == [(BINARY, b"a" * 600 + b"b" * 600)]


def test_control_frames_do_not_count_against_the_message_limit():
    stream = client_frame(BINARY, b"a" * 900, fin=False) + client_frame(PING, b"p" * 125)
    stream += client_frame(CONTINUATION, b"b" * 100)
    assert read_all(stream, limit=1000) == [(PING, b"p" * 125), (BINARY, b"a" * 900 + b"b" * 100)]


# -- close frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (None, "")),
        (struct.pack("!H", 1000), (1000, "")),
        (struct.pack("!H", 1001) + "bye ☃".encode(), (1001, "bye ☃")),
        (struct.pack("!H", 3000), (3000, "")),
        (struct.pack("!H", 4999), (4999, "")),
    ],
)
def test_a_valid_close_body_gives_its_code_and_reason(body, expected):
    assert close_code_of(body) == expected


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\x03", 1002),
        (struct.pack("!H", 999), 1002),
        (struct.pack("!H", 1005), 1002),  # "no status": never sent
        (struct.pack("!H", 1006), 1002),  # "abnormal closure": never sent
        (struct.pack("!H", 1015), 1002),
        (struct.pack("!H", 2999), 1002),
        (struct.pack("!H", 5000), 1002),
        (struct.pack("!H", 1000) + b"\xc3", 1007),
    ],
)
def test_an_invalid_close_body_is_a_fault(body, code):
    with pytest.raises(FrameError) as caught:
        close_code_of(body)
    assert caught.value.code == code


def test_a_close_frame_we_send_fits_a_control_frame_and_keeps_whole_characters():
    frame = close_frame(1001, "☃" * 100)  # 300 bytes of reason
    assert frame[0] == 0x80 | CLOSE and frame[1] <= 125 and len(frame) == 2 + frame[1]
    code, reason = close_code_of(frame[2:])
    assert code == 1001 and set(reason) == {"☃"} and len(reason) == 41


def test_control_frames_we_send_are_whole_and_unmasked():
    assert control_frame(PING) == b"\x89\x00"
    assert control_frame(PONG, b"abc") == b"\x8a\x03abc"


valid_frames = st.builds(
    lambda opcode, payload, fin: client_frame(opcode, payload, fin=fin),
    st.sampled_from([CONTINUATION, TEXT, BINARY, PING, PONG, CLOSE]),
    st.binary(max_size=130),
    st.booleans(),
)


@given(st.lists(st.one_of(valid_frames, st.binary(max_size=12)), max_size=10), st.integers(1, 50))
def test_any_bytes_give_messages_or_a_frame_error_with_a_close_code_and_nothing_else(pieces, step):
    stream = b"".join(pieces)
    reader = FrameReader(300)
    try:
        for start in range(0, len(stream), step):
            for opcode, _ in reader.feed(stream[start : start + step]):
                assert opcode in (TEXT, BINARY, PING, PONG, CLOSE)
    except FrameError as exc:
        assert exc.code in (1002, 1007, 1009)


def test_a_message_of_endless_empty_fragments_is_refused_at_the_fragment_limit():
    from hub.transports.wsframes import MAX_FRAGMENTS

    reader = FrameReader(LIMIT)
    assert reader.feed(client_frame(TEXT, b"", fin=False)) == []
    for _ in range(MAX_FRAGMENTS - 1):
        assert reader.feed(client_frame(CONTINUATION, b"", fin=False)) == []
    with pytest.raises(FrameError) as caught:
        reader.feed(client_frame(CONTINUATION, b"", fin=False))
    assert caught.value.code == 1009
    whole = (
        client_frame(TEXT, b"a", fin=False)
        + client_frame(CONTINUATION, b"b", fin=False) * (MAX_FRAGMENTS - 2)
        + client_frame(CONTINUATION, b"c")
    )
    assert read_all(whole) == [(TEXT, b"a" + b"b" * (MAX_FRAGMENTS - 2) + b"c")]
