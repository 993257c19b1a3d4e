//! Condition evaluation: a JSON object `{"conditions": ..., "user": {...},
//! "resource": {...}, "tenant": {...}, "context": {...}}` is compiled and
//! evaluated against those attributes. A crash is a panic.

use std::borrow::Cow;

use pdp::abac::{self, Attributes, Entity};
use serde_json::{Map, Value};

struct Maps<'a>([&'a Map<String, Value>; 4]);

impl Attributes for Maps<'_> {
    fn attribute(&self, entity: Entity, name: &str) -> Option<Cow<'_, Value>> {
        let map = match entity {
            Entity::User => self.0[0],
            Entity::Resource => self.0[1],
            Entity::Tenant => self.0[2],
            Entity::Context => self.0[3],
        };
        map.get(name).map(Cow::Borrowed)
    }
}

fn main() {
    let empty = Map::new();
    afl::fuzz!(|data: &[u8]| {
        let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let Some(conditions) = input.get("conditions") else {
            return;
        };
        let Ok(cond) = abac::compile(conditions) else {
            return;
        };
        let map = |k: &str| input.get(k).and_then(Value::as_object).unwrap_or(&empty);
        let attrs = Maps([map("user"), map("resource"), map("tenant"), map("context")]);
        let _ = abac::eval(&cond, &attrs);
    });
}
