"""The worker line protocol, both ways, from one table (as h11's SIMPLE_CASES)."""

from __future__ import annotations

import random

import pytest

from pool_wire.arena import Span
from pool_wire.limits import MAX_PAYLOAD_BYTES
from pool_wire.protocol import (
    CHUNK_BYTES,
    MAX_LINE_BYTES,
    ArenaJob,
    ArenaOutcome,
    FunctionBytes,
    JobOutcome,
    JobRequest,
    LineReader,
    Message,
    Output,
    Progress,
    ProtocolError,
    Raised,
    Ready,
    ResultStatus,
    Retiring,
    decode_line,
    encode,
    encode_parts,
)

CASES: list[tuple[Message, bytes]] = [
    (Ready(pid=4121, version=2), b"READY 4121 2\n"),
    (JobRequest(job_id="r17", payload=b"\x00\xffhi"), b"JOB r17 AP9oaQ==\n"),
    (JobRequest(job_id="r1", payload=b""), b"JOB r1 \n"),
    (Progress(job_id="j9", fraction=0.25, message="step 1"), b"PROGRESS j9 0.25 c3RlcCAx\n"),
    (Progress(job_id="j9", fraction=None, message=""), b"PROGRESS j9 - \n"),
    (Output(job_id="j9", skipped=0, text="line 1\n"), b"OUTPUT j9 0 bGluZSAxCg==\n"),
    (Output(job_id="j9", skipped=12, text=""), b"OUTPUT j9 12 \n"),
    (
        JobOutcome(job_id="r17", status=ResultStatus.OK, outcome=b"done"),
        b"RESULT r17 ok ZG9uZQ==\n",
    ),
    (JobOutcome(job_id="j2", status=ResultStatus.RETRY, outcome=b""), b"RESULT j2 retry \n"),
    (Retiring(job_id="j3", reason="fd 1 changed"), b"RETIRING j3 ZmQgMSBjaGFuZ2Vk\n"),
    (Raised(job_id="j4", summary="ValueError: bad"), b"RAISED j4 VmFsdWVFcnJvcjogYmFk\n"),
    (FunctionBytes(key="5e1f", pickled=b"\x80\x05"), b"FUNCTION 5e1f gAU=\n"),
    (ArenaJob(job_id="r8", span=Span(0, 134217728)), b"JOBREF r8 0 134217728\n"),
    (ArenaJob(job_id="r9", span=Span(4096, 0)), b"JOBREF r9 4096 0\n"),
    (
        ArenaOutcome(job_id="r8", status=ResultStatus.ERROR, span=Span(0, 1048577)),
        b"RESULTREF r8 error 0 1048577\n",
    ),
    (
        JobOutcome(job_id="r4", status=ResultStatus.MISSING, outcome=b"miss"),
        b"RESULT r4 missing bWlzcw==\n",
    ),
]


@pytest.mark.parametrize(("message", "line"), CASES)
def test_encode(message: Message, line: bytes) -> None:
    """Each message encodes to exactly one newline-terminated line."""
    assert encode(message) == line


@pytest.mark.parametrize(("message", "line"), CASES)
def test_decode(message: Message, line: bytes) -> None:
    """Each line decodes back to its message, with or without the newline."""
    assert decode_line(line) == message
    assert decode_line(line.rstrip(b"\n")) == message


@pytest.mark.parametrize(
    "line",
    [
        b"HELLO 1 2\n",
        b"READY 12\n",
        b"READY x 1\n",
        b"JOB r1 not*base64\n",
        b"JOB r1 AAAA\nAAAA\n",
        b"RESULT r5 ok AAA\n",
        b"JOB  AAAA\n",
        b"RESULT r5\n",
        b"RESULT r5 maybe AAAA\n",
        b"PROGRESS j1 half AAAA\n",
        b"OUTPUT j1 -3 AAAA\n",
        b"\n",
        b"FUNCTION gAU=\n",
        b"JOBREF r1 0\n",
        b"JOBREF r1 0 12 7\n",
        b"JOBREF r1 -1 12\n",
        b"JOBREF r1 0 +12\n",
        b"JOBREF r1 0 1_2\n",
        b"JOBREF  0 12\n",
        b"RESULTREF r1 maybe 0 12\n",
        b"RESULTREF r1 ok 0\n",
    ],
)
def test_malformed_lines_name_their_bytes(line: bytes) -> None:
    """Anything else is a ProtocolError that quotes the offending bytes."""
    with pytest.raises(ProtocolError, match="line"):
        decode_line(line)


def test_long_lines_are_quoted_briefly() -> None:
    """Error messages quote at most 80 bytes of a (possibly huge) bad line."""
    with pytest.raises(ProtocolError) as info:
        decode_line(b"NOPE " + b"x" * 10_000)
    assert len(str(info.value)) < 200


def test_line_limit_fits_the_largest_payload() -> None:
    """A maximum-size payload still fits in one line under MAX_LINE_BYTES."""
    encoded_size = (MAX_PAYLOAD_BYTES + 2) // 3 * 4
    assert len(b"RESULT j-0123456789abcdef retry \n") + encoded_size <= MAX_LINE_BYTES


@pytest.mark.parametrize(("message", "line"), CASES)
def test_parts_join_to_the_line(message: Message, line: bytes) -> None:
    """encode_parts writes the same bytes as encode, in pieces."""
    assert b"".join(encode_parts(message)) == line


def feed_in_chunks(reader: LineReader, data: bytes, size: int) -> list[Message]:
    messages = []
    for start in range(0, len(data), size):
        messages += reader.feed(data[start : start + size])
    return messages


@pytest.mark.parametrize("size", [1, 2, 3, 5, 17, 64, 10_000])
def test_reader_parses_lines_cut_anywhere(size: int) -> None:
    """However the stream is cut into chunks, the reader gives every message, in order."""
    stream = b"".join(line for _, line in CASES)
    assert feed_in_chunks(LineReader(), stream, size) == [message for message, _ in CASES]


@pytest.mark.parametrize("size", [4093, 65_536, 1 << 20])
def test_large_payload_is_written_in_pieces_and_read_back(size: int) -> None:
    """A payload of several pieces: none over a piece's base64, and the bytes survive."""
    payload = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)
    message = JobOutcome(job_id="j1", status=ResultStatus.OK, outcome=payload)
    parts = list(encode_parts(message))
    assert len(parts) == 6  # head, four pieces, newline
    assert max(len(part) for part in parts) == CHUNK_BYTES // 3 * 4
    stream = b"".join(parts) + encode(Ready(pid=1, version=2))
    assert feed_in_chunks(LineReader(), stream, size) == [message, Ready(pid=1, version=2)]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"JOB r1 AA==", b"AAAA\n"],  # padding, then more
        [b"JOB r1 AAA", b"\n"],  # cut short
        [b"JOB r1 AAAA", b"AA*A\n"],  # not base64
        [b"RESULT r1 ", b"maybe AAAA\n"],  # no such status
        [b"JOB" + b"x" * 2000],  # no head
        [b"PROGRESS j1 0.5 ", b"//79\n"],  # message not UTF-8
    ],
)
def test_reader_rejects_malformed_lines_across_chunks(chunks: list[bytes]) -> None:
    reader = LineReader()
    with pytest.raises(ProtocolError):
        for chunk in chunks:
            reader.feed(chunk)


def test_reader_enforces_the_line_limit() -> None:
    """A line over the limit is refused as it arrives, before it is all buffered."""
    reader = LineReader(max_line_bytes=1000)
    reader.feed(b"JOB r1 " + b"AAAA" * 200)
    with pytest.raises(ProtocolError, match="over 1000 bytes"):
        reader.feed(b"AAAA" * 100)
    with pytest.raises(ProtocolError, match="over 1000 bytes"):  # in the line's first chunk
        LineReader(max_line_bytes=1000).feed(b"JOB r1 " + b"AAAA" * 300)


@pytest.mark.parametrize("size", [1, 7, 1000, 2000])
def test_line_limit_holds_however_the_line_arrives(size: int) -> None:
    """The limit counts the whole line (head too, newline not), read whole or in pieces."""
    fits = b"JOB r12 " + b"AAAA" * 247 + b"AA==\n"  # 1000 bytes before the newline
    assert len(fits) == 1001
    assert feed_in_chunks(LineReader(max_line_bytes=1000), fits, size) == [
        JobRequest("r12", bytes(742))
    ]
    with pytest.raises(ProtocolError, match="over 1000 bytes"):
        feed_in_chunks(LineReader(max_line_bytes=1000), fits.replace(b"r12", b"r123"), size)


RESULT_LINE = encode(JobOutcome("r7", ResultStatus.OK, b"the value"))


@pytest.mark.parametrize("garbage", [b"garbage\n", b"RESULT r7 ok *\n", b"x" * 5000])
def test_messages_before_a_broken_line_are_delivered(garbage: bytes) -> None:
    """A RESULT then a broken line in one chunk: the RESULT comes with the error."""
    reader = LineReader()
    with pytest.raises(ProtocolError) as info:
        reader.feed(encode(Ready(1, 2)) + RESULT_LINE + garbage)
    assert info.value.messages == [Ready(1, 2), JobOutcome("r7", ResultStatus.OK, b"the value")]


@pytest.mark.parametrize("cut", [1, len(RESULT_LINE) - 1, len(RESULT_LINE), len(RESULT_LINE) + 3])
def test_messages_before_a_break_are_delivered_across_chunks(cut: int) -> None:
    """Split anywhere, the RESULT is delivered (returned, or with the error)
    before the broken line is reported, and the reader stays broken."""
    stream = RESULT_LINE + b"garbage\n"
    reader = LineReader()
    delivered = reader.feed(stream[:cut])
    with pytest.raises(ProtocolError, match="unknown line kind") as info:
        reader.feed(stream[cut:])
    assert delivered + info.value.messages == [JobOutcome("r7", ResultStatus.OK, b"the value")]
    with pytest.raises(ProtocolError, match="broke earlier"):
        reader.feed(encode(Ready(1, 2)))


def random_stream(rng: random.Random) -> bytes:
    """A few messages of every kind, then maybe a byte or two broken."""
    messages: list[Message] = []
    for _ in range(rng.randrange(1, 4)):
        body = rng.randbytes(rng.choice([0, 1, 2, 3, 5, 100, 5000]))
        kinds: list[Message] = [
            JobRequest(f"j{rng.randrange(100)}", body),
            JobOutcome(f"r{rng.randrange(100)}", rng.choice(list(ResultStatus)), body),
            Progress("p1", rng.choice([None, 0.5]), body.hex()),
            Ready(rng.randrange(1000), 2),
            FunctionBytes(f"k{rng.randrange(100)}", body),
            ArenaJob(f"j{rng.randrange(100)}", Span(0, len(body))),
            ArenaOutcome("r1", rng.choice(list(ResultStatus)), Span(rng.randrange(9), 7)),
        ]
        messages.append(rng.choice(kinds))
    stream = bytearray(b"".join(encode(m) for m in messages))
    if rng.random() < 0.5:
        for _ in range(rng.randrange(1, 3)):
            stream[rng.randrange(len(stream))] = rng.choice(b" =*A\n\x00")
    return bytes(stream)


def read_all(stream: bytes, size: int) -> tuple[list[Message], bool]:
    """Every message the reader delivers, and whether the stream broke."""
    reader, messages = LineReader(), []
    for start in range(0, len(stream), size):
        try:
            messages += reader.feed(stream[start : start + size])
        except ProtocolError as e:
            return messages + e.messages, True
    return messages, False


def test_chunking_never_changes_what_the_reader_sees() -> None:
    """Valid or broken, a stream reads the same whole or cut into any chunks:
    the same messages, and for a broken one the same messages before the break."""
    rng = random.Random(20261124)
    broken = 0
    for _ in range(500):
        stream = random_stream(rng)
        whole = read_all(stream, len(stream))
        broken += whole[1]
        for size in (1, 2, 3, 7, 64, 1000):
            assert read_all(stream, size) == whole, (size, stream[:120])
    assert 150 < broken < 300  # both kinds of stream are well represented
