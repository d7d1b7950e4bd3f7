//! Envoy's side of the ext_proc protocol, built and read the way Envoy does: the messages it sends the picker and
//! the parts of the answers it acts on. For the picker's tests (unit and end to end) and `bench extproc`, so each
//! message is built once.

use envoy_types::pb::envoy::{
    config::core::v3::Metadata,
    service::ext_proc::v3::{CommonResponse, HttpBody, HttpTrailers, ProcessingRequest, processing_request},
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
