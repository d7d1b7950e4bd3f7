"""Conformance checks of Switchyard's ext_proc endpoint picker, driven by an independent client.

The messages are built and parsed by the `envoy-data-plane` package (betterproto2 code generated from Envoy's own
protos, over grpcio), so our Rust protobuf code is not the only judge of the wire format. The Rust test
`crates/gateway/tests/ext_proc_python.rs` starts a gateway over fake pods with scripted metrics and runs this script:

    python test_ext_proc.py --addr 127.0.0.1:PORT --pods IP:PORT,IP:PORT,IP:PORT --scenario routing|saturated

Exit status 0 when every check passed; each failure is printed with its case name.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import queue
import sys
import traceback

import betterproto2
import grpc
from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue, Metadata
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import ProcessingModeBodySendMode as BodyMode
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    ExternalProcessorSyncStub,
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)
from envoy_data_plane.google.protobuf import ListValue, Struct, Value

DESTINATION = "x-gateway-destination-endpoint"
CHUNK_LIMIT = 62_000


class Stream:
    """Envoy's side of one ext_proc stream: messages go in through a queue, answers come out in order."""

    def __init__(self, channel: grpc.Channel):
        self._outbox: queue.Queue = queue.Queue()
        self._answers = ExternalProcessorSyncStub(channel).process(self._messages())

    def _messages(self):
        while True:
            message = self._outbox.get()
            if message is None:
                return
            yield message

    def send(self, message: ProcessingRequest) -> None:
        self._outbox.put(message)

    def recv(self) -> ProcessingResponse:
        return next(self._answers)

    def close(self) -> None:
        self._outbox.put(None)


def headers(path: str, body_len: int | None, end_of_stream: bool = False, **extra) -> ProcessingRequest:
    pairs = [(":method", "GET" if end_of_stream else "POST"), (":path", path), ("content-type", "application/json")]
    if body_len is not None:
        pairs.append(("content-length", str(body_len)))
    return ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]),
            end_of_stream=end_of_stream,
        ),
        **extra,
    )


def body(chunk: bytes, end_of_stream: bool) -> ProcessingRequest:
    return ProcessingRequest(request_body=HttpBody(body=chunk, end_of_stream=end_of_stream))


def subset(endpoints: list[str]) -> Metadata:
    values = ListValue(values=[Value(string_value=e) for e in endpoints])
    hint = Struct(fields={"x-gateway-destination-endpoint-subset": Value(list_value=values)})
    return Metadata(filter_metadata={"envoy.lb.subset_hint": hint})


def kind(response: ProcessingResponse) -> tuple[str, object]:
    return betterproto2.which_one_of(response, "response")


class Routed:
    def __init__(self, first: ProcessingResponse):
        name, answer = kind(first)
        assert name == "request_headers", f"the header answer must come first, got {name}"
        common = answer.response
        self.clear_route_cache = common.clear_route_cache
        self.headers = {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}
        self.metadata = first.dynamic_metadata.fields["envoy.lb"].struct_value.fields[DESTINATION].string_value
        self.body = b""
        self.chunks: list[int] = []

    @property
    def destination(self) -> str:
        assert self.headers[DESTINATION] == self.metadata, f"header {self.headers} != metadata {self.metadata}"
        return self.metadata

    def json(self) -> dict:
        return json.loads(self.body)


class Immediate(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text


def read_answer(stream: Stream) -> Routed:
    """Reads the routing answer of a FULL_DUPLEX_STREAMED request; raises Immediate for a local reply."""
    first = stream.recv()
    name, answer = kind(first)
    if name == "immediate_response":
        raise Immediate(answer.status.code, answer.body.decode())
    routed = Routed(first)
    while True:
        name, answer = kind(stream.recv())
        assert name == "request_body", f"expected body chunks after the headers, got {name}"
        streamed = answer.response.body_mutation.streamed_response
        routed.body += streamed.body
        routed.chunks.append(len(streamed.body))
        if streamed.end_of_stream:
            return routed


def request(channel, path: str, payload: bytes, chunk: int = 1 << 16, metadata=None, keep=False):
    stream = Stream(channel)
    stream.send(headers(path, len(payload), metadata_context=metadata) if metadata else headers(path, len(payload)))
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] or [b""]
    for i, piece in enumerate(pieces):
        stream.send(body(piece, i + 1 == len(pieces)))
    try:
        routed = read_answer(stream)
    except Immediate:
        stream.close()
        raise
    if keep:
        return stream, routed
    finish_json(stream)
    return routed


def finish_json(stream: Stream) -> None:
    """Plays a short JSON response so the picker finishes the decision, then ends the stream."""
    stream.send(ProcessingRequest(response_headers=HttpHeaders(headers=HeaderMap(headers=[
        HeaderValue(key=":status", raw_value=b"200"), HeaderValue(key="content-type", raw_value=b"application/json")
    ]))))
    assert kind(stream.recv())[0] == "response_headers"
    usage = b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}'
    stream.send(ProcessingRequest(response_body=HttpBody(body=usage, end_of_stream=True)))
    name, answer = kind(stream.recv())
    assert name == "response_body" and answer.response.body_mutation.streamed_response.body == usage
    stream.close()


def expect_immediate(channel, path: str, payload: bytes, status: int, prefix: str, metadata=None) -> None:
    try:
        routed = request(channel, path, payload, metadata=metadata)
    except Immediate as reply:
        assert reply.status == status, f"status {reply.status}, want {status}: {reply.text}"
        assert reply.text.startswith(prefix), f"body {reply.text!r} does not start with {prefix!r}"
        return
    raise AssertionError(f"routed to {routed.destination}, want {status}")


CHAT = json.dumps({"model": "qwq", "messages": [{"role": "user", "content": "Who are you?"}]}).encode()


def routing_cases(channel, pods: list[str], address: str):
    def least_loaded():
        routed = request(channel, "/v1/chat/completions", CHAT)
        assert routed.destination == pods[1], f"{routed.destination} is not the least loaded {pods[1]}"
        assert routed.clear_route_cache
        assert routed.json()["model"] == "qwq-32b"
        assert routed.headers["content-length"] == str(len(routed.body))

    def canary_rewrite_split_inside_utf8():
        payload = json.dumps({"model": "canary", "prompt": "ünïcödé ✓", "max_tokens": 3}, ensure_ascii=False).encode()
        routed = request(channel, "/v1/completions", payload, chunk=3)
        assert routed.json()["model"] == "canary-v2"
        assert routed.json()["prompt"] == "ünïcödé ✓"
        assert routed.headers["content-length"] == str(len(routed.body)) != str(len(payload))

    def unknown_model():
        payload = b'{"model":"gpt-9","prompt":"x"}'
        expect_immediate(channel, "/v1/completions", payload, 404, 'inference error: NotFound - model "gpt-9"')

    def bad_json():
        expect_immediate(channel, "/v1/completions", b"no healthy upstream", 400, "inference error: BadRequest - ")

    def empty_body():
        expect_immediate(channel, "/v1/completions", b"", 400, "inference error: BadRequest - request body is empty")

    def subset_hint():
        routed = request(channel, "/v1/chat/completions", CHAT, metadata=subset([pods[2]]))
        assert routed.destination == pods[2]
        expect_immediate(
            channel, "/v1/chat/completions", CHAT, 503,
            "inference error: ServiceUnavailable - failed to find candidate pods", metadata=subset(["127.0.99.9:1"]),
        )

    def one_megabyte_in_64k_chunks():
        prompt = "Ω long context " * 70_000
        payload = json.dumps({"model": "qwq", "prompt": prompt}, ensure_ascii=False).encode()
        assert len(payload) > 1_000_000
        routed = request(channel, "/v1/completions", payload, chunk=65_536)
        assert max(routed.chunks) <= CHUNK_LIMIT, routed.chunks
        assert routed.json()["prompt"] == prompt

    def sse_response_streams_through():
        stream, routed = request(channel, "/v1/completions", b'{"model":"qwq","prompt":"s","stream":true}', keep=True)
        stream.send(ProcessingRequest(response_headers=HttpHeaders(headers=HeaderMap(headers=[
            HeaderValue(key=":status", raw_value=b"200"),
            HeaderValue(key="content-type", raw_value=b"text/event-stream"),
        ]))))
        assert kind(stream.recv())[0] == "response_headers"
        events = [
            b'data: {"choices":[{"text":"a"}],"usage":null}\n\n',
            b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}\n\ndata: [DONE]\n\n',
            b"",
        ]
        for i, event in enumerate(events):
            last = i + 1 == len(events)
            stream.send(ProcessingRequest(response_body=HttpBody(body=event, end_of_stream=last)))
            name, answer = kind(stream.recv())
            assert name == "response_body", name
            echoed = answer.response.body_mutation.streamed_response
            assert (echoed.body, echoed.end_of_stream) == (event, last), echoed
        stream.close()

    def buffered_mode():
        stream = Stream(channel)
        config = ProtocolConfiguration(request_body_mode=BodyMode.BUFFERED, response_body_mode=BodyMode.BUFFERED)
        payload = b'{"model":"canary","prompt":"buffered"}'
        stream.send(headers("/v1/completions", len(payload), protocol_config=config))
        name, answer = kind(stream.recv())
        mutation = answer.response.header_mutation
        assert name == "request_headers" and not (mutation and mutation.set_headers), answer
        stream.send(body(payload, True))
        reply = stream.recv()
        name, answer = kind(reply)
        assert name == "request_body", name
        common = answer.response
        set_headers = {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}
        destination = reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields[DESTINATION].string_value
        assert set_headers[DESTINATION] == destination == pods[1]
        assert json.loads(common.body_mutation.body)["model"] == "canary-v2"
        assert set_headers["content-length"] == str(len(common.body_mutation.body))
        stream.close()

    def header_only_request():
        stream = Stream(channel)
        stream.send(headers("/v1/models", None, end_of_stream=True))
        reply = stream.recv()
        assert kind(reply)[0] == "request_headers"
        assert reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields[DESTINATION].string_value in pods
        stream.close()

    def concurrent_streams():
        def one(i: int) -> str:
            payload = json.dumps({"model": "qwq", "prompt": f"concurrent {i}"}).encode()
            return request(channel, "/v1/completions", payload, chunk=16).destination
        with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
            destinations = list(pool.map(one, range(64)))
        assert len(destinations) == 64 and set(destinations) <= set(pods), destinations

    def cancel_mid_stream():
        own = grpc.insecure_channel(address)
        stream, routed = request(own, "/v1/completions", b'{"model":"qwq","prompt":"cancel"}', keep=True)
        assert routed.destination in pods
        own.close()  # cancels the call: the picker must finish the decision on its own

    return [
        least_loaded, canary_rewrite_split_inside_utf8, unknown_model, bad_json, empty_body, subset_hint,
        one_megabyte_in_64k_chunks, sse_response_streams_through, buffered_mode, header_only_request,
        concurrent_streams, cancel_mid_stream,
    ]


def saturated_cases(channel, pods: list[str], address: str):
    def sheddable_is_shed():
        expect_immediate(
            channel, "/v1/completions", b'{"model":"batch","prompt":"x"}', 429,
            "inference error: ResourceExhausted - system saturated, sheddable request dropped",
        )

    def critical_is_routed():
        routed = request(channel, "/v1/completions", b'{"model":"qwq","prompt":"x"}')
        assert routed.destination in pods

    return [sheddable_is_shed, critical_is_routed]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--pods", required=True, help="comma-separated ip:port, in the order the test loaded them")
    parser.add_argument("--scenario", choices=["routing", "saturated"], required=True)
    args = parser.parse_args()
    pods = args.pods.split(",")
    channel = grpc.insecure_channel(args.addr, options=[("grpc.max_receive_message_length", 64 << 20)])
    cases = (routing_cases if args.scenario == "routing" else saturated_cases)(channel, pods, args.addr)
    failed = 0
    for case in cases:
        try:
            case()
            print(f"ok    {case.__name__}")
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            print(f"FAIL  {case.__name__}")
            traceback.print_exc()
    print(f"{len(cases) - failed} passed, {failed} failed")
    channel.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
