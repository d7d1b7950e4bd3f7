//! The engines' KV events, as the gateway consumes them: [`decode`] reads vLLM's wire format; the resident blocks
//! they describe live in the scheduler's precise prefix index (`scheduler::prefix::precise`).

pub mod decode;
pub mod stream;
pub mod subscriber;
