//! The engine seen the way the tests see the reference: documents and
//! queries as JSON in, endpoint response bodies as JSON out.
//!
//! Keeping every call into `pdp::decide` here means a change to the engine's
//! signatures touches one file, and the tables and the property test stay
//! written in terms of what a client sends and receives.

use pdp::decide;
use pdp::model::DataDocument;
use pdp::snapshot::{BuildError, Snapshot};
use serde::Deserialize;
use serde_json::Value;

/// A document given as JSON, as a client or file would give it.
pub fn doc(v: &Value) -> DataDocument {
    serde_json::from_value(v.clone()).expect("test document has the data document shape")
}

/// The query types borrow from the request body, so they are read from text
/// the caller keeps alive, as the server reads them.
fn query<'t, Q: Deserialize<'t>>(text: &'t str) -> Q {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("engine refused a well-formed query {text}: {e}"))
}

fn to_json<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("responses serialize")
}

/// A built snapshot, answering every endpoint.
pub struct Engine {
    pub snap: Snapshot,
}

impl Engine {
    pub fn build(doc: &DataDocument) -> Result<Engine, BuildError> {
        Snapshot::build(doc).map(|snap| Engine { snap })
    }

    pub fn from_json(d: &Value) -> Engine {
        Engine::build(&doc(d)).unwrap_or_else(|e| panic!("engine refused the document: {e}"))
    }

    /// The `/allowed` body with debugging on.
    pub fn allowed_debug(&self, q: &Value) -> Value {
        let text = q.to_string();
        let d = decide::check(&self.snap, &query(&text));
        to_json(d.to_response(true))
    }

    pub fn allowed(&self, q: &Value) -> bool {
        let text = q.to_string();
        let d = decide::check(&self.snap, &query(&text));
        let body = to_json(d.to_response(false));
        body["allow"]
            .as_bool()
            .unwrap_or_else(|| panic!("/allowed body without a boolean allow: {body}"))
    }

    /// The `/allowed/bulk` answers: one array body, decoded as the server
    /// decodes it.
    pub fn allowed_bulk(&self, qs: &[Value]) -> Vec<bool> {
        let text = Value::Array(qs.to_vec()).to_string();
        let parsed: Vec<decide::AllowedQuery> = query(&text);
        decide::check_bulk(&self.snap, &parsed)
            .iter()
            .map(|d| d.allow)
            .collect()
    }

    pub fn allowed_tenants(&self, q: &Value) -> Value {
        let text = q.to_string();
        to_json(decide::allowed_tenants(&self.snap, &query(&text)))
    }

    pub fn user_permissions(&self, q: &Value) -> Value {
        let text = q.to_string();
        to_json(decide::user_permissions(&self.snap, &query(&text)))
    }

    pub fn authorized_users(&self, q: &Value) -> Value {
        let text = q.to_string();
        to_json(decide::authorized_users(&self.snap, &query(&text)))
    }

    pub fn user_tenants(&self, q: &Value) -> Value {
        let text = q.to_string();
        to_json(decide::user_tenants(&self.snap, &query(&text)))
    }
}
