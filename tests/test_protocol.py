"""The worker line protocol, both ways, from one table (as h11's SIMPLE_CASES)."""

from __future__ import annotations

import pytest

from worker_proc.protocol import (
    MAX_LINE_BYTES,
    MAX_PAYLOAD_BYTES,
    JobOutcome,
    JobRequest,
    Message,
    Progress,
    ProtocolError,
    Ready,
    ResultStatus,
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
    (
        JobOutcome(job_id="r17", status=ResultStatus.OK, outcome=b"done"),
        b"RESULT r17 ok ZG9uZQ==\n",
    ),
    (JobOutcome(job_id="j2", status=ResultStatus.RETRY, outcome=b""), b"RESULT j2 retry \n"),
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
        b"\n",
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
