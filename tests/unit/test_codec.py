from __future__ import annotations

import random
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.errors import InvalidParams, ProtocolError
from novacron.rpc import codec

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
msgids = st.integers(min_value=0, max_value=codec.MAX_MSGID)
methods = st.text(min_size=1, max_size=30)
named = st.dictionaries(st.text(max_size=10), values, max_size=4)
params = st.one_of(st.just([]), named.map(lambda d: [d]))
messages = st.one_of(
    st.builds(codec.Request, msgids, methods, params),
    st.builds(codec.Response, msgids, values, values),
    st.builds(codec.Notification, methods, params),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


@given(st.lists(messages, max_size=20), st.lists(st.integers(min_value=0), max_size=30))
def test_any_messages_split_anywhere_decode_to_the_same_messages(
    msgs: list[codec.Message], cuts: list[int]
) -> None:
    stream = b"".join(codec.encode(m) for m in msgs)
    decoder = codec.Decoder()
    decoded: list[codec.Message] = []
    for chunk in split(stream, cuts):
        decoded.extend(decoder.feed(chunk))
    assert decoded == msgs


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=10))
def test_garbage_raises_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = codec.Decoder(max_message_size=1024)
    try:
        for chunk in split(data, cuts):
            for message in decoder.feed(chunk):
                assert isinstance(message, codec.Request | codec.Response | codec.Notification)
    except ProtocolError as exc:
        assert exc.code in ("invalid_request", "too_large")


@given(values)
def test_valid_msgpack_that_is_not_rpc_is_refused(obj: object) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    decoder = codec.Decoder()
    try:
        out = decoder.feed(data)
    except ProtocolError:
        return
    # only lists shaped like a message can get through
    assert isinstance(obj, list)
    assert len(out) == 1


@pytest.mark.parametrize(
    "obj",
    [
        [0, -1, "m", []],
        [0, 2**32, "m", []],
        [0, 1.5, "m", []],
        [0, 1, "", []],
        [0, 1, 7, []],
        [0, 1, "m", {}],
        [3, 1, "m", []],
        [0, 1, "m"],
        [2, "m", [], 1],
        [True, 1, "m", []],
        {"a": 1},
        "hello",
    ],
)
def test_malformed_shapes_are_protocol_errors(obj: object) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.Decoder().feed(msgpack.packb(obj))
    assert info.value.code == "invalid_request"


def test_message_over_the_limit_is_too_large_even_in_small_chunks() -> None:
    decoder = codec.Decoder(max_message_size=1000)
    data = codec.encode_request(1, "m", {"blob": b"x" * 2000})
    with pytest.raises(ProtocolError) as info:
        for i in range(0, len(data), 7):
            decoder.feed(data[i : i + 7])
    assert info.value.code == "too_large"


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_a_message_of_many_small_items_over_the_limit_is_too_large(chunk: int) -> None:
    """The unpacker parses arrays and maps as they come and keeps their items as objects
    (an empty map is one byte, and some 70 bytes of memory): the limit must still hold
    for the message's bytes, however it is cut."""
    decoder = codec.Decoder(max_message_size=4096)
    params: list[list[dict[str, int]]] = [
        [{}] * 3000,
        [{}] * 3000,
    ]  # 6,000-odd bytes, each array under the limit
    data = msgpack.packb([0, 1, "m", params])
    with pytest.raises(ProtocolError) as info:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i : i + chunk])
    assert info.value.code == "too_large"


@given(st.lists(messages, max_size=10), st.lists(st.integers(min_value=0), max_size=20))
def test_pending_counts_the_bytes_of_the_message_begun(
    msgs: list[codec.Message], cuts: list[int]
) -> None:
    encoded = [codec.encode(m) for m in msgs]
    ends, total = [], 0
    for e in encoded:
        total += len(e)
        ends.append(total)
    decoder, fed = codec.Decoder(), 0
    for chunk in split(b"".join(encoded), cuts):
        decoder.feed(chunk)
        fed += len(chunk)
        begun = max((end for end in ends if end <= fed), default=0)
        assert decoder.pending == fed - begun


def test_message_exactly_at_the_limit_passes_and_many_small_ones_in_one_chunk() -> None:
    one = codec.encode_request(1, "m", {"blob": b"x" * 900})
    decoder = codec.Decoder(max_message_size=len(one))
    assert len(decoder.feed(one)) == 1
    many = codec.encode_request(2, "ping") * 500  # far bigger than the limit in total
    assert len(decoder.feed(many)) == 500


def test_huge_declared_length_does_not_allocate() -> None:
    decoder = codec.Decoder(max_message_size=1024)
    # a str32 header claiming 4 GiB, then nothing: must wait or fail, never allocate
    assert decoder.feed(b"\x94\x00\x01\xdb\xff\xff\xff\xff") == []
    with pytest.raises(ProtocolError):
        decoder.feed(b"a" * 2048)


def test_decoder_stays_failed() -> None:
    decoder = codec.Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"\xc1")  # never-used byte
    with pytest.raises(ProtocolError):
        decoder.feed(codec.encode_request(1, "m"))


def test_invalid_utf8_method_is_a_protocol_error() -> None:
    raw = b"\x94\x00\x01\xa2\xff\xfe\x90"
    with pytest.raises(ProtocolError):
        codec.Decoder().feed(raw)


def test_named_params_shapes() -> None:
    assert codec.named_params([]) == {}
    assert codec.named_params([{"a": 1}]) == {"a": 1}
    for bad in ([1], [{"a": 1}, {}], ["x"]):
        with pytest.raises(InvalidParams):
            codec.named_params(bad)


def test_encoders_match_the_spec_bytes() -> None:
    # [0, 1, "session.hello", []]
    assert codec.encode_request(1, "session.hello") == b"\x94\x00\x01\xadsession.hello\x90"
    assert codec.encode_response(7, None, True) == b"\x94\x01\x07\xc0\xc3"
    assert codec.encode_notification("event", {"a": 1}) == b"\x93\x02\xa5event\x91\x81\xa1a\x01"


def test_messages_before_garbage_ride_on_the_error() -> None:
    decoder = codec.Decoder()
    data = codec.encode_request(1, "a") + codec.encode_request(2, "b") + b"\xc1"
    with pytest.raises(ProtocolError) as info:
        decoder.feed(data)
    assert [m.msgid for m in info.value.decoded] == [1, 2]


def server_decoder() -> codec.Decoder:
    return codec.Decoder(1 << 20, codec.REQUEST_MAX_ITEMS, codec.REQUEST_MAX_CONTAINERS)


@given(st.lists(messages, max_size=10), st.lists(st.integers(min_value=0), max_size=20))
def test_a_servers_limits_change_nothing_for_messages_within_them(
    msgs: list[codec.Message], cuts: list[int]
) -> None:
    decoder, decoded = server_decoder(), []
    for chunk in split(b"".join(codec.encode(m) for m in msgs), cuts):
        decoded.extend(decoder.feed(chunk))
    assert decoded == msgs


def test_a_request_at_the_servers_limits_is_taken() -> None:
    tenants = [f"t{i}" for i in range(codec.REQUEST_MAX_ITEMS)]
    options = {f"k{i}": i for i in range(codec.REQUEST_MAX_ITEMS)}
    # the message, its params, the named map, tenants, options and maps' list are six
    maps: list[dict[str, int]] = [{} for _ in range(codec.REQUEST_MAX_CONTAINERS - 6)]
    data = codec.encode_request(1, "m", {"tenants": tenants, "options": options, "maps": maps})
    (request,) = server_decoder().feed(data)
    assert isinstance(request, codec.Request)
    assert request.params == [{"tenants": tenants, "options": options, "maps": maps}]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"a": list(range(257))}, "an array or map is too long: 257 exceeds max_array_len(256)"),
        ({"m": {str(i): i for i in range(257)}}, "an array or map is too long: 257 exceeds"),
        ({"a": [[]] * 200, "b": [{}] * 100}, "a message holds more than 256 arrays and maps"),
        ({"deep": [[[[[{}]]]]] * 60}, "a message holds more than 256 arrays and maps"),
    ],
)
def test_a_request_past_the_servers_limits_is_too_large(
    params: dict[str, Any], message: str
) -> None:
    data = codec.encode_request(1, "m", params)
    decoder = server_decoder()
    with pytest.raises(ProtocolError) as info:
        for i in range(0, len(data), 100):
            decoder.feed(data[i : i + 100])
    assert info.value.code == "too_large"
    assert info.value.message.startswith(message)
    # a client reads answers of any shape within the size limit
    (request,) = codec.Decoder(1 << 20).feed(data)
    assert isinstance(request, codec.Request) and request.params == [params]


def map_bytes(pairs: list[tuple[str, int]]) -> bytes:
    """A msgpack map of these pairs, in this order, repeats included (a dict cannot
    hold a key twice)."""
    out = bytearray(b"\xde" + len(pairs).to_bytes(2, "big"))
    for key, value in pairs:
        out += msgpack.packb(key) + msgpack.packb(value)
    return bytes(out)


def request_with(params_map: bytes) -> bytes:
    return b"\x94\x00\x01\xa6vm.get\x91" + params_map


@pytest.mark.parametrize(
    "params_map",
    [
        map_bytes([("name", 1), ("name", 2)]),
        map_bytes([("name", 1), ("tenant", 2), ("name", 1)]),
        # a map inside the arguments
        b"\x81\xa5disks\x91" + map_bytes([("size_gib", 1), ("format", 2), ("size_gib", 3)]),
    ],
)
def test_a_key_twice_in_a_map_of_a_request_is_a_protocol_error(params_map: bytes) -> None:
    """Which of the two a reader keeps is up to the reader (this one would keep the
    last): a request must mean the same to every reader, so it is not taken."""
    data = codec.encode_request(1, "session.hello") + request_with(params_map)
    with pytest.raises(ProtocolError) as info:
        server_decoder().feed(data)
    assert info.value.code == "invalid_request"
    assert "twice" in info.value.message
    assert [m.msgid for m in info.value.decoded] == [1]  # the one before is still answered


@given(
    st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**64 - 1), max_size=20),
    st.randoms(),
)
def test_maps_of_distinct_keys_decode_whatever_their_order(
    params: dict[str, int], rnd: random.Random
) -> None:
    pairs = list(params.items())
    rnd.shuffle(pairs)
    (request,) = server_decoder().feed(request_with(map_bytes(pairs)))
    assert isinstance(request, codec.Request) and request.params == [params]


def test_one_message_within_the_limits_cannot_take_much_memory() -> None:
    """Arrays as long as allowed, nested as deep as msgpack goes (1,024 levels), each
    holding short strings but for the next level: about the most objects a message within
    the limits keeps (the arrays are never complete, so none is counted)."""
    items = codec.REQUEST_MAX_ITEMS
    level = b"\xdd" + items.to_bytes(4, "big") + b"\xa2ab" * (items - 1)
    data = (b"\x94\x00\x01\xa1m\x91" + level * 1020)[: codec.DEFAULT_MAX_MESSAGE]
    decoder = codec.Decoder(codec.DEFAULT_MAX_MESSAGE, items, codec.REQUEST_MAX_CONTAINERS)
    tracemalloc.start()
    try:
        assert decoder.feed(data) == []  # not complete: every array still open
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # (without the item limit, 8 MiB of short strings in arrays would keep ~160 MB)
    assert peak < 32 << 20


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, object(), {1, 2}])
def test_params_msgpack_cannot_carry_are_the_callers_invalid_params(value: object) -> None:
    with pytest.raises(InvalidParams, match="cannot be sent"):
        codec.encode_request(1, "vm.create", {"name": "a", "vcpus": value})
