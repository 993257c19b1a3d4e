//! The HTTP edge: accept, route and decode, decide, encode.
//!
//! One hyper server answers the Permit PDP API, the AuthZEN API, health,
//! readiness and metrics on one port, over HTTP/1.1 (keep-alive) and HTTP/2
//! (h2c). `transport` accepts connections and drains them; `routes` is
//! the route table; `handlers` answers a request; `error` turns every
//! failure into its response in one place: bad input gets a 4xx with a JSON
//! body naming the problem, and nothing a client sends can make the server
//! panic or answer 500.

mod error;
mod handlers;
mod routes;
mod transport;

pub use error::{decode, ApiError};
pub use handlers::{App, HeavyWork, HttpSettings};
pub use routes::{Cost, Route, Spec, Verb};
pub use transport::serve;
