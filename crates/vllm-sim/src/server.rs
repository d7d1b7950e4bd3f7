//! HTTP front end of a replica: OpenAI-compatible completions/chat (JSON and SSE), models, health and
//! vLLM-named Prometheus metrics.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use futures::Stream;

use crate::engine::{Emission, Finish, LoraId, NewRequest};
use crate::kv::BLOCK_SIZE;
use crate::metrics::MetricsPage;
use crate::openai::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatMessage, ChatRequest, Completion, CompletionChoice,
    CompletionRequest, Content, Delta, ErrorBody, ErrorDetail, ModelCard, ModelList, Prompt, Usage,
};
use crate::replica::{Shared, Submission, SubmitError};
use crate::tokenize::FILLER_TEXT;

/// vLLM's default `max_tokens` for `/v1/completions`.
const DEFAULT_COMPLETION_MAX_TOKENS: u32 = 16;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&shared), stamp_arrival))
        .with_state(shared)
}

/// When a request's headers arrived, in simulated seconds: its arrival time. Reading and parsing the body and
/// tokenizing take wall time that every time scale would multiply differently, so the engine counts from here.
#[derive(Debug, Clone, Copy)]
struct Received(f64);

async fn stamp_arrival(
    State(shared): State<Arc<Shared>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request.extensions_mut().insert(Received(shared.sim_now()));
    next.run(request).await
}

/// Which endpoint a generation came from; decides the response shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completions,
    Chat,
}

/// A validated generation request, ready for the engine.
#[derive(Debug)]
struct Generation {
    endpoint: Endpoint,
    model: String,
    lora: Option<LoraId>,
    prompt: Vec<u32>,
    max_tokens: u32,
    stream: bool,
    include_usage: bool,
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    Extension(received): Extension<Received>,
    body: Bytes,
) -> Response {
    let req: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => return bad_request(&shared, &format!("invalid request body: {err}")),
    };
    let prompts = &shared.cfg.prompts;
    let prompt = match req.prompt {
        Prompt::Text(text) => prompts.text(&text),
        Prompt::Tokens(ids) => Ok(ids),
        Prompt::Texts(mut texts) if texts.len() == 1 => prompts.text(&texts.remove(0)),
        Prompt::TokenBatches(mut batches) if batches.len() == 1 => Ok(batches.remove(0)),
        Prompt::Texts(_) | Prompt::TokenBatches(_) => {
            return bad_request(&shared, "exactly one prompt per request is supported");
        }
    };
    let prompt = match prompt {
        Ok(prompt) => prompt,
        Err(err) => return bad_request(&shared, &format!("the prompt could not be tokenized: {err}")),
    };
    let model = req.model.unwrap_or_else(|| shared.cfg.served_model_name.clone());
    let Ok(lora) = shared.resolve_model(&model) else {
        return model_not_found(&shared, &model);
    };
    let generation = Generation {
        endpoint: Endpoint::Completions,
        model,
        lora,
        prompt,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_COMPLETION_MAX_TOKENS),
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
    };
    generate(shared, generation, received).await
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    Extension(received): Extension<Received>,
    body: Bytes,
) -> Response {
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => return bad_request(&shared, &format!("invalid request body: {err}")),
    };
    if req.messages.is_empty() {
        return bad_request(&shared, "messages must not be empty");
    }
    let messages: Vec<tokenizer::ChatMessage> = req
        .messages
        .iter()
        .map(|m| tokenizer::ChatMessage {
            role: m.role.clone(),
            content: match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
            },
        })
        .collect();
    let prompt = match shared.cfg.prompts.chat(&messages) {
        Ok(prompt) => prompt,
        Err(err) => return bad_request(&shared, &format!("the conversation could not be tokenized: {err}")),
    };
    let model = req.model.unwrap_or_else(|| shared.cfg.served_model_name.clone());
    let Ok(lora) = shared.resolve_model(&model) else {
        return model_not_found(&shared, &model);
    };
    // Like vLLM: without a limit, generate up to the end of the context window.
    let room = (shared.cfg.engine.max_model_len as usize).saturating_sub(prompt.len());
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(room.max(1) as u32);
    let generation = Generation {
        endpoint: Endpoint::Chat,
        model,
        lora,
        prompt,
        max_tokens,
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
    };
    generate(shared, generation, received).await
}

async fn generate(shared: Arc<Shared>, g: Generation, Received(received): Received) -> Response {
    if shared.inject_error(&g.model) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "injected fault: the simulator was told to fail this share of requests",
        );
    }
    let prompt_tokens = g.prompt.len() as u32;
    let request = NewRequest {
        prompt: g.prompt,
        max_tokens: g.max_tokens,
        lora: g.lora,
    };
    let submission = match shared.admit(&g.model, request, received).await {
        Ok(s) => s,
        Err(SubmitError::Invalid(err)) => return bad_request(&shared, &err.to_string()),
        Err(SubmitError::Closed) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableError",
                "the engine is shutting down",
            );
        }
    };
    let ctx = ResponseCtx {
        id: shared.response_id(match g.endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        }),
        endpoint: g.endpoint,
        model: g.model,
        created: unix_now() as u64,
        prompt_tokens,
    };
    if g.stream {
        Sse::new(sse_stream(submission, ctx, g.include_usage)).into_response()
    } else {
        complete(submission, ctx).await
    }
}

/// What every response object of one request repeats.
#[derive(Debug)]
struct ResponseCtx {
    id: String,
    endpoint: Endpoint,
    model: String,
    created: u64,
    prompt_tokens: u32,
}

impl ResponseCtx {
    fn usage(&self, finish: &Finish) -> Usage {
        Usage::new(self.prompt_tokens, finish.completion_tokens, finish.cached_tokens)
    }

    /// One stream chunk carrying `text` (and the finish reason on the last one).
    fn chunk(&self, text: &str, finish_reason: Option<&'static str>) -> String {
        let json = match self.endpoint {
            Endpoint::Completions => serde_json::to_string(&Completion {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                choices: vec![CompletionChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason,
                    stop_reason: None,
                }],
                usage: None,
            }),
            Endpoint::Chat => serde_json::to_string(&ChatChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: vec![ChatChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: None,
                        content: Some(text),
                    },
                    logprobs: None,
                    finish_reason,
                }],
                usage: None,
            }),
        };
        json.unwrap_or_default()
    }

    /// The opening chat chunk announcing the assistant role.
    fn role_chunk(&self) -> String {
        serde_json::to_string(&ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(""),
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        })
        .unwrap_or_default()
    }

    /// The trailing `stream_options.include_usage` chunk: no choices, only usage.
    fn usage_chunk(&self, finish: &Finish) -> String {
        let usage = Some(self.usage(finish));
        let json = match self.endpoint {
            Endpoint::Completions => serde_json::to_string(&Completion {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage,
            }),
            Endpoint::Chat => serde_json::to_string(&ChatChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage,
            }),
        };
        json.unwrap_or_default()
    }
}

/// Waits for the whole generation and answers with one JSON object.
async fn complete(Submission { mut rx, mut guard }: Submission, ctx: ResponseCtx) -> Response {
    let mut finish = None;
    while let Some(em) = rx.recv().await {
        if let Some(f) = em.finish {
            finish = Some(f);
            break;
        }
    }
    let Some(finish) = finish else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            "the engine is shutting down",
        );
    };
    guard.disarm();
    let text = FILLER_TEXT.repeat(finish.completion_tokens as usize);
    let reason = Some(finish.reason.as_str());
    let body = match ctx.endpoint {
        Endpoint::Completions => serde_json::to_vec(&Completion {
            id: &ctx.id,
            object: "text_completion",
            created: ctx.created,
            model: &ctx.model,
            choices: vec![CompletionChoice {
                index: 0,
                text: &text,
                logprobs: None,
                finish_reason: reason,
                stop_reason: None,
            }],
            usage: Some(ctx.usage(&finish)),
        }),
        Endpoint::Chat => serde_json::to_vec(&ChatCompletion {
            id: &ctx.id,
            object: "chat.completion",
            created: ctx.created,
            model: &ctx.model,
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant",
                    content: &text,
                },
                logprobs: None,
                finish_reason: reason,
                stop_reason: None,
            }],
            usage: ctx.usage(&finish),
        }),
    };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            &err.to_string(),
        ),
    }
}

/// State of one SSE response. Dropping it (client gone) drops the submission's guard, which aborts the
/// request in the engine.
struct SseState {
    sub: Submission,
    ctx: ResponseCtx,
    include_usage: bool,
    pending: VecDeque<String>,
    done: bool,
}

impl SseState {
    fn on_emission(&mut self, em: Emission) {
        let reason = em.finish.map(|f| f.reason.as_str());
        if em.token.is_some() || reason.is_some() {
            let text = if em.token.is_some() { FILLER_TEXT } else { "" };
            self.pending.push_back(self.ctx.chunk(text, reason));
        }
        if let Some(finish) = em.finish {
            self.sub.guard.disarm();
            if self.include_usage {
                self.pending.push_back(self.ctx.usage_chunk(&finish));
            }
            self.pending.push_back("[DONE]".to_owned());
            self.done = true;
        }
    }
}

/// One SSE event per generated token, produced as engine steps complete, then usage and `[DONE]`.
fn sse_stream(sub: Submission, ctx: ResponseCtx, include_usage: bool) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut pending = VecDeque::new();
    if ctx.endpoint == Endpoint::Chat {
        pending.push_back(ctx.role_chunk());
    }
    let state = SseState {
        sub,
        ctx,
        include_usage,
        pending,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok(Event::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            match st.sub.rx.recv().await {
                Some(em) => st.on_emission(em),
                // The engine stopped: end the stream without `[DONE]` so clients see it as cut short.
                None => return None,
            }
        }
    })
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let cfg = &shared.cfg;
    let created = unix_now() as u64;
    let base = cfg.served_model_name.as_str();
    let mut data = vec![ModelCard {
        id: base,
        object: "model",
        created,
        owned_by: "vllm",
        root: base,
        parent: None,
        max_model_len: cfg.engine.max_model_len,
    }];
    data.extend(cfg.lora_adapters.iter().map(|name| ModelCard {
        id: name,
        object: "model",
        created,
        owned_by: "vllm",
        root: name,
        parent: Some(base),
        max_model_len: cfg.engine.max_model_len,
    }));
    axum::Json(ModelList { object: "list", data }).into_response()
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let snap = shared.snapshot();
    let cfg = &shared.cfg;
    let names = |ids: &std::collections::BTreeSet<LoraId>| {
        ids.iter()
            .filter_map(|&i| cfg.lora_adapters.get(i as usize).map(String::as_str))
            .collect::<Vec<_>>()
            .join(",")
    };
    let lora = (cfg.engine.max_loras > 0).then(|| {
        (
            names(&snap.running_loras),
            names(&snap.waiting_loras),
            cfg.engine.max_loras,
        )
    });
    let page = MetricsPage {
        model_name: &cfg.served_model_name,
        running: snap.running,
        waiting: snap.waiting,
        kv_usage: snap.kv_usage,
        prefix_caching: cfg.engine.prefix_caching,
        block_size: BLOCK_SIZE,
        num_gpu_blocks: cfg.engine.num_gpu_blocks,
        lora,
        unix_time: unix_now(),
        injected_errors: shared.stats().requests_failed,
        metrics: snap.metrics,
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        page.render(),
    )
        .into_response()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn bad_request(shared: &Shared, message: &str) -> Response {
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    error(StatusCode::BAD_REQUEST, "BadRequestError", message)
}

fn model_not_found(shared: &Shared, model: &str) -> Response {
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    error(
        StatusCode::NOT_FOUND,
        "NotFoundError",
        &format!("The model `{model}` does not exist."),
    )
}

fn error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param: None,
            code: status.as_u16(),
        },
    };
    (status, axum::Json(body)).into_response()
}
