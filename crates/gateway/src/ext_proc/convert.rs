//! Conversions between Envoy's ext_proc protobuf messages and what the picker needs: header lookups, the
//! `envoy.lb` metadata in both directions, and the response messages (header mutation, streamed body, errors).

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            HeaderMap, HeaderValue, HeaderValueOption, Metadata, header_value_option::HeaderAppendAction,
        },
        service::ext_proc::v3::{
            BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
            ProcessingResponse, StreamedBodyResponse, TrailersResponse, body_mutation, processing_response,
        },
        r#type::v3::HttpStatus,
    },
    google::protobuf::{ListValue, Struct, Value, value::Kind},
};

use crate::error::RouteError;

/// Dynamic-metadata namespace Envoy's load balancers read the destination from.
pub const DESTINATION_NAMESPACE: &str = "envoy.lb";
/// Header and metadata key naming the chosen endpoint (`ip:port`, then comma-separated fallbacks).
pub const DESTINATION_KEY: &str = "x-gateway-destination-endpoint";
/// Metadata key, in [`DESTINATION_NAMESPACE`], under which the proxy reports the endpoint that served the request.
pub const SERVED_KEY: &str = "x-gateway-destination-endpoint-served";
/// Metadata namespace of the proxy's subset hint.
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
/// Key of the subset hint: a list of `ip:port` the picker must choose from.
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
/// Largest body chunk sent back to Envoy; some Envoy builds cap a streamed chunk at 64 KiB (upstream uses the same).
pub const BODY_CHUNK_BYTES: usize = 62_000;

/// The value of header `name` (lower-case, as Envoy sends them); `raw_value` wins over `value` like upstream.
pub fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let header = headers?.headers.iter().find(|h| h.key.eq_ignore_ascii_case(name))?;
    if header.raw_value.is_empty() {
        Some(header.value.as_str())
    } else {
        std::str::from_utf8(&header.raw_value).ok()
    }
}

/// The proxy's subset hint: `Some(list)` when the metadata carries one (possibly empty), else `None`.
pub fn subset_hint(metadata: Option<&Metadata>) -> Option<Vec<String>> {
    let value = metadata?
        .filter_metadata
        .get(SUBSET_NAMESPACE)?
        .fields
        .get(SUBSET_KEY)?;
    Some(match &value.kind {
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        // Some proxies flatten the list into one comma-separated string.
        Some(Kind::StringValue(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    })
}

/// The endpoint the proxy reports as having served the request (`envoy.lb` / `…-served`).
pub fn served_endpoint(metadata: Option<&Metadata>) -> Option<String> {
    let value = metadata?
        .filter_metadata
        .get(DESTINATION_NAMESPACE)?
        .fields
        .get(SERVED_KEY)?;
    match &value.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn string_value(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// `{"envoy.lb": {"x-gateway-destination-endpoint": destination}}`.
pub fn destination_metadata(destination: &str) -> Struct {
    let inner = Struct {
        fields: [(DESTINATION_KEY.to_owned(), string_value(destination))].into(),
    };
    Struct {
        fields: [(
            DESTINATION_NAMESPACE.to_owned(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into(),
    }
}

/// A subset hint as the proxy sends it, for tests and benchmarks that play Envoy.
pub fn subset_metadata(endpoints: &[&str]) -> Metadata {
    let list = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: endpoints.iter().map(|e| string_value(*e)).collect(),
        })),
    };
    Metadata {
        filter_metadata: [(
            SUBSET_NAMESPACE.to_owned(),
            Struct {
                fields: [(SUBSET_KEY.to_owned(), list)].into(),
            },
        )]
        .into(),
        ..Metadata::default()
    }
}

/// A header to set, overwriting any value the request already has.
pub fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        }),
        // The client must not be able to pick its own destination by sending the header itself.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

fn response(response: processing_response::Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..ProcessingResponse::default()
    }
}

/// The routing answer to the request headers (FULL_DUPLEX_STREAMED): set headers, recompute the route.
pub fn request_headers_routed(set_headers: Vec<HeaderValueOption>, destination: &str) -> ProcessingResponse {
    ProcessingResponse {
        dynamic_metadata: Some(destination_metadata(destination)),
        ..response(processing_response::Response::RequestHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers,
                    ..HeaderMutation::default()
                }),
                clear_route_cache: true,
                ..CommonResponse::default()
            }),
        }))
    }
}

/// "Continue unchanged" for request headers (BUFFERED mode, where the decision comes with the body).
pub fn request_headers_continue() -> ProcessingResponse {
    response(processing_response::Response::RequestHeaders(HeadersResponse {
        response: Some(CommonResponse::default()),
    }))
}

/// The body sent back in FULL_DUPLEX_STREAMED mode, in chunks of at most [`BODY_CHUNK_BYTES`]; an empty body is
/// one empty chunk carrying the end of stream.
pub fn request_body_streamed(body: &[u8], out: &mut Vec<ProcessingResponse>) {
    let chunks = body.len().div_ceil(BODY_CHUNK_BYTES).max(1);
    for i in 0..chunks {
        let chunk = &body[i * BODY_CHUNK_BYTES..((i + 1) * BODY_CHUNK_BYTES).min(body.len())];
        out.push(response(processing_response::Response::RequestBody(streamed_body(
            chunk.to_vec(),
            i + 1 == chunks,
        ))));
    }
}

fn streamed_body(body: Vec<u8>, end_of_stream: bool) -> BodyResponse {
    BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..StreamedBodyResponse::default()
                })),
            }),
            ..CommonResponse::default()
        }),
    }
}

/// The routing answer to a BUFFERED request body: headers set on the body response, the body replaced only when
/// it changed, and the route recomputed.
pub fn request_body_buffered_routed(
    set_headers: Vec<HeaderValueOption>,
    new_body: Option<Vec<u8>>,
    destination: &str,
) -> ProcessingResponse {
    ProcessingResponse {
        dynamic_metadata: Some(destination_metadata(destination)),
        ..response(processing_response::Response::RequestBody(BodyResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers,
                    ..HeaderMutation::default()
                }),
                body_mutation: new_body.map(|body| BodyMutation {
                    mutation: Some(body_mutation::Mutation::Body(body)),
                }),
                clear_route_cache: true,
                ..CommonResponse::default()
            }),
        }))
    }
}

pub fn request_trailers() -> ProcessingResponse {
    response(processing_response::Response::RequestTrailers(
        TrailersResponse::default(),
    ))
}

pub fn response_headers_continue() -> ProcessingResponse {
    response(processing_response::Response::ResponseHeaders(HeadersResponse {
        response: Some(CommonResponse::default()),
    }))
}

/// A response-body chunk echoed unchanged in FULL_DUPLEX_STREAMED mode.
pub fn response_body_streamed(body: Vec<u8>, end_of_stream: bool) -> ProcessingResponse {
    response(processing_response::Response::ResponseBody(streamed_body(
        body,
        end_of_stream,
    )))
}

/// "Continue unchanged" for a response body in the modes where Envoy keeps the bytes (BUFFERED, STREAMED).
pub fn response_body_continue() -> ProcessingResponse {
    response(processing_response::Response::ResponseBody(BodyResponse {
        response: Some(CommonResponse::default()),
    }))
}

pub fn response_trailers() -> ProcessingResponse {
    response(processing_response::Response::ResponseTrailers(
        TrailersResponse::default(),
    ))
}

/// A local reply with the upstream picker's status and body (`inference error: <Code> - <message>`).
pub fn immediate(err: &RouteError) -> ProcessingResponse {
    immediate_raw(err.http_status().as_u16(), err.body(), err.code())
}

/// A local reply with an explicit status and body.
pub fn immediate_raw(status: u16, body: String, details: &str) -> ProcessingResponse {
    response(processing_response::Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(status),
        }),
        headers: Some(HeaderMutation {
            set_headers: vec![set_header("content-type", "text/plain; charset=utf-8")],
            ..HeaderMutation::default()
        }),
        body: body.into_bytes(),
        details: format!("switchyard_{details}"),
        ..ImmediateResponse::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_hint_reads_lists_and_comma_strings() {
        let meta = subset_metadata(&["10.0.0.1:8000", "10.0.0.2:8000"]);
        assert_eq!(
            subset_hint(Some(&meta)),
            Some(vec!["10.0.0.1:8000".to_owned(), "10.0.0.2:8000".to_owned()])
        );
        assert_eq!(subset_hint(Some(&subset_metadata(&[]))), Some(vec![]));
        assert_eq!(subset_hint(None), None);
        assert_eq!(subset_hint(Some(&Metadata::default())), None);
        let mut flat = subset_metadata(&[]);
        flat.filter_metadata
            .get_mut(SUBSET_NAMESPACE)
            .unwrap()
            .fields
            .insert(SUBSET_KEY.into(), string_value("10.0.0.1:8000, 10.0.0.3:8000"));
        assert_eq!(
            subset_hint(Some(&flat)),
            Some(vec!["10.0.0.1:8000".to_owned(), "10.0.0.3:8000".to_owned()])
        );
    }

    #[test]
    fn streamed_body_is_chunked_below_64k() {
        let mut out = Vec::new();
        request_body_streamed(&vec![b'a'; 2 * BODY_CHUNK_BYTES + 1], &mut out);
        let sizes: Vec<(usize, bool)> = out
            .iter()
            .map(|r| match &r.response {
                Some(processing_response::Response::RequestBody(BodyResponse {
                    response:
                        Some(CommonResponse {
                            body_mutation:
                                Some(BodyMutation {
                                    mutation: Some(body_mutation::Mutation::StreamedResponse(s)),
                                }),
                            ..
                        }),
                })) => (s.body.len(), s.end_of_stream),
                other => panic!("not a streamed body: {other:?}"),
            })
            .collect();
        assert_eq!(
            sizes,
            vec![(BODY_CHUNK_BYTES, false), (BODY_CHUNK_BYTES, false), (1, true)]
        );
        out.clear();
        request_body_streamed(b"", &mut out);
        assert_eq!(out.len(), 1, "an empty body still carries the end of stream");
    }

    #[test]
    fn headers_prefer_raw_value() {
        let map = HeaderMap {
            headers: vec![
                HeaderValue {
                    key: ":path".into(),
                    value: "/v1/completions".into(),
                    ..HeaderValue::default()
                },
                HeaderValue {
                    key: "content-length".into(),
                    raw_value: b"42".to_vec(),
                    value: "ignored".into(),
                },
            ],
        };
        assert_eq!(header(Some(&map), ":path"), Some("/v1/completions"));
        assert_eq!(header(Some(&map), "Content-Length"), Some("42"));
        assert_eq!(header(Some(&map), "x-request-id"), None);
    }
}
