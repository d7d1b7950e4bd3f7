//! The routing request: what the scheduler needs to know about one client request.

use audit::Criticality;

/// A request after parsing and the canary split.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub request_id: String,
    /// Unix milliseconds when the gateway received the request (wall clock, read at the edge).
    pub received_at_ms: u64,
    /// Model name as the client sent it.
    pub model: String,
    /// Model name after the weighted targetModels split; what the model server is asked for.
    pub target_model: String,
    pub criticality: Criticality,
    /// Pool name, copied into the decision.
    pub pool: String,
    /// The text hashed for prefix affinity: `prompt` for completions, the JSON of `messages` for chat.
    pub prompt: String,
    /// The LoRA adapter the request needs when `target_model` is served as an adapter.
    pub lora_adapter: Option<String>,
}
