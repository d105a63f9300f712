//! Everything upstream: the provider wire formats, the HTTP client and the SSE stream, the
//! circuit breaker, and the one structured-call path ([`Llm`]). Knows nothing of content,
//! moods or runs: callers bring their prompts and validators.

pub mod call;
pub mod circuit;
pub mod client;
pub mod credentials;
pub mod providers;
pub mod redact;
pub mod remote;
pub mod route;
pub mod settings;
pub mod stream;
pub mod upstreams;

pub use call::{Answer, Llm};
pub use credentials::{credentials, Credentials};
pub use redact::redact;
