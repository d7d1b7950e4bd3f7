//! vllm-sim binary shim.
fn main() {}
