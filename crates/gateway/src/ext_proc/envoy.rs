//! Envoy's side of the ext_proc protocol, built and read the way Envoy does: the messages it sends the picker and
//! the parts of the answers it acts on. For the picker's tests (unit and end to end) and `bench extproc`, so each
//! message is built once.

use envoy_types::pb::envoy::{
    config::core::v3::Metadata,
    service::ext_proc::v3::{
        CommonResponse, HttpBody, HttpTrailers, ProcessingRequest, ProcessingResponse, processing_request,
    },
};

use super::convert;

/// A message carrying `request`.
pub fn message(request: processing_request::Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..ProcessingRequest::default()
    }
}

/// A chunk of the request body.
pub fn request_body(chunk: &[u8], end_of_stream: bool) -> ProcessingRequest {
    message(processing_request::Request::RequestBody(HttpBody {
        body: chunk.to_vec(),
        end_of_stream,
        ..HttpBody::default()
    }))
}

/// A chunk of the response body.
pub fn response_body(chunk: &[u8], end_of_stream: bool) -> ProcessingRequest {
    message(processing_request::Request::ResponseBody(HttpBody {
        body: chunk.to_vec(),
        end_of_stream,
        ..HttpBody::default()
    }))
}

pub fn request_trailers() -> ProcessingRequest {
    message(processing_request::Request::RequestTrailers(HttpTrailers::default()))
}

pub fn response_trailers() -> ProcessingRequest {
    message(processing_request::Request::ResponseTrailers(HttpTrailers::default()))
}

/// The metadata Envoy attaches once it knows which endpoint served the request (after a fallback, say).
pub fn served_metadata(served: &str) -> Metadata {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let inner = Struct {
        fields: [(
            convert::SERVED_KEY.to_owned(),
            Value {
                kind: Some(Kind::StringValue(served.to_owned())),
            },
        )]
        .into(),
    };
    Metadata {
        filter_metadata: [(convert::DESTINATION_NAMESPACE.to_owned(), inner)].into(),
        ..Metadata::default()
    }
}

/// The headers an answer sets, as (name, value) pairs.
pub fn set_headers(common: &CommonResponse) -> Vec<(String, String)> {
    common
        .header_mutation
        .iter()
        .flat_map(|m| &m.set_headers)
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), String::from_utf8_lossy(&h.raw_value).into_owned()))
        .collect()
}

/// The endpoint an answer routes to, as Envoy reads it from `dynamic_metadata["envoy.lb"]`. Panics (it is for tests
/// and benchmarks) when the answer carries none.
pub fn destination_metadata(response: &ProcessingResponse) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    let ns = &response.dynamic_metadata.as_ref().expect("dynamic metadata").fields[convert::DESTINATION_NAMESPACE];
    let Some(Kind::StructValue(inner)) = &ns.kind else {
        panic!("envoy.lb is not a struct: {ns:?}");
    };
    match &inner.fields[convert::DESTINATION_KEY].kind {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("destination is not a string: {other:?}"),
    }
}
