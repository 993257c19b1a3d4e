//! Events as OPA's decision-log JSON, masked, and packed into gzipped
//! chunks within the ingress's size limit.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::Event;

/// What a masked value is replaced with.
const MASKED: &str = "****";

/// A JSON pointer into a decision's `input` (RFC 6901), whose value is
/// replaced before the event leaves the process. A `*` token matches every
/// element of an array and every member of an object; an input that is an
/// array (a bulk check) is masked element by element as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pointer: String,
    tokens: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a JSON pointer (it must start with `/`, as /user/attributes/ssn)")]
pub struct MaskError(String);

impl Mask {
    pub fn parse(pointer: &str) -> Result<Mask, MaskError> {
        let rest = pointer
            .strip_prefix('/')
            .filter(|r| !r.is_empty())
            .ok_or_else(|| MaskError(pointer.to_owned()))?;
        let tokens = rest
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Ok(Mask {
            pointer: pointer.to_owned(),
            tokens,
        })
    }

    /// Replaces what the pointer names in `input`; whether anything was.
    fn apply(&self, input: &mut Value) -> bool {
        let here = replace(input, &self.tokens);
        match input {
            Value::Array(items) => items
                .iter_mut()
                .fold(here, |hit, item| replace(item, &self.tokens) | hit),
            _ => here,
        }
    }
}

fn replace(value: &mut Value, tokens: &[String]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        *value = Value::String(MASKED.to_owned());
        return true;
    };
    match value {
        Value::Object(map) if first == "*" => map
            .values_mut()
            .fold(false, |hit, v| replace(v, rest) | hit),
        Value::Object(map) => map.get_mut(first).is_some_and(|v| replace(v, rest)),
        Value::Array(items) if first == "*" => items
            .iter_mut()
            .fold(false, |hit, v| replace(v, rest) | hit),
        Value::Array(items) => first
            .parse::<usize>()
            .ok()
            .and_then(|i| items.get_mut(i))
            .is_some_and(|v| replace(v, rest)),
        _ => false,
    }
}

#[derive(Serialize)]
struct Labels<'a> {
    id: &'a str,
    version: &'static str,
}

#[derive(Serialize)]
struct Timers {
    /// The decision's time, as OPA names its handler timer.
    timer_server_handler_ns: u64,
}

#[derive(Serialize)]
struct Out<'a> {
    decision_id: &'a str,
    labels: Labels<'a>,
    path: &'static str,
    input: Box<RawValue>,
    result: &'a RawValue,
    timestamp: String,
    metrics: Timers,
    /// The pointers whose values were replaced, as OPA lists them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    masked: Vec<String>,
}

/// Turns events into OPA's JSON.
pub struct Encoder {
    instance: String,
    masks: Vec<Mask>,
}

impl Encoder {
    pub fn new(instance: &uuid::Uuid, masks: Vec<Mask>) -> Encoder {
        Encoder {
            instance: instance.to_string(),
            masks,
        }
    }

    /// One event's JSON. The request and the answer were JSON when they
    /// were decided, so they are carried as they are, unless a mask
    /// applies.
    pub fn event(&self, e: &Event) -> Vec<u8> {
        if e.forwarded {
            return e.input.to_vec();
        }
        let id = e.id.to_string();
        let result = raw(&e.result);
        let out = |input| Out {
            decision_id: &id,
            labels: Labels {
                id: &self.instance,
                version: env!("CARGO_PKG_VERSION"),
            },
            path: e.path,
            input,
            result: &result,
            timestamp: humantime::format_rfc3339_nanos(e.at).to_string(),
            metrics: Timers {
                timer_server_handler_ns: e.took.as_nanos().min(u64::MAX as u128) as u64,
            },
            masked: Vec::new(),
        };
        let encoded = if self.masks.is_empty() {
            serde_json::to_vec(&out(raw(&e.input)))
        } else {
            let mut input: Value = serde_json::from_slice(&e.input).unwrap_or(Value::Null);
            let masked = self
                .masks
                .iter()
                .filter(|m| m.apply(&mut input))
                .map(|m| format!("/input{}", m.pointer))
                .collect();
            serde_json::value::to_raw_value(&input).and_then(|input| {
                serde_json::to_vec(&Out {
                    masked,
                    ..out(input)
                })
            })
        };
        // Every part is JSON already, or a string: encoding cannot fail.
        encoded.unwrap_or_default()
    }
}

/// `bytes` as a JSON value: itself when it is JSON (always, for what was
/// decided), else `null`.
fn raw(bytes: &[u8]) -> Box<RawValue> {
    serde_json::from_slice::<&RawValue>(bytes)
        .map(RawValue::to_owned)
        .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
}

/// A gzipped JSON array of events.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub gz: Bytes,
    pub events: usize,
}

/// Packs encoded events into chunks of at most `limit` gzipped bytes, as
/// full as it can without compressing twice in the usual case: the batch
/// is sized by the ratio the last chunks compressed at, and a batch that
/// still comes out too long is split in two.
pub struct Chunker {
    limit: usize,
    /// Uncompressed bytes per compressed byte, learnt.
    ratio: f64,
}

impl Chunker {
    pub fn new(limit: usize) -> Chunker {
        Chunker { limit, ratio: 4.0 }
    }

    /// The chunks, and how many events were too large for any chunk.
    pub fn pack(&mut self, events: Vec<Vec<u8>>) -> (Vec<Chunk>, usize) {
        let target = (self.limit as f64 * self.ratio * 0.9) as usize;
        let mut chunks = Vec::new();
        let mut too_large = 0;
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        for e in events {
            if !batch.is_empty() && size + e.len() + 1 > target {
                too_large += self.seal(std::mem::take(&mut batch), &mut chunks);
                size = 0;
            }
            size += e.len() + 1;
            batch.push(e);
        }
        if !batch.is_empty() {
            too_large += self.seal(batch, &mut chunks);
        }
        (chunks, too_large)
    }

    /// Compresses `batch` into one chunk, or into halves until each fits;
    /// returns the events that fit in none.
    fn seal(&mut self, batch: Vec<Vec<u8>>, out: &mut Vec<Chunk>) -> usize {
        let plain: usize = batch.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
        let gz = gzip(&batch);
        if gz.len() <= self.limit {
            let ratio = plain as f64 / gz.len().max(1) as f64;
            self.ratio = (self.ratio * 0.5 + ratio * 0.5).clamp(1.0, 50.0);
            out.push(Chunk {
                gz: Bytes::from(gz),
                events: batch.len(),
            });
            return 0;
        }
        if batch.len() == 1 {
            return 1;
        }
        let mut first = batch;
        let second = first.split_off(first.len() / 2);
        self.seal(first, out) + self.seal(second, out)
    }
}

fn gzip(events: &[Vec<u8>]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    // Writes into a Vec cannot fail.
    let _ = gz.write_all(b"[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            let _ = gz.write_all(b",");
        }
        let _ = gz.write_all(e);
    }
    let _ = gz.write_all(b"]");
    gz.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;
    use std::time::{Duration, SystemTime};

    fn event(input: &str) -> Event {
        Event {
            id: uuid::Uuid::from_bytes([7; 16]),
            path: "permit/root",
            input: Bytes::copy_from_slice(input.as_bytes()),
            result: Bytes::from_static(b"{\"allow\":true,\"result\":true}"),
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
            took: Duration::from_nanos(4_200),
            forwarded: false,
        }
    }

    #[test]
    fn an_event_has_opas_fields_and_the_request_as_it_came() {
        let enc = Encoder::new(&uuid::Uuid::from_bytes([1; 16]), Vec::new());
        let input = r#"{"user": {"key": "u"}, "action": "read", "resource": {"type": "doc"}}"#;
        let v: Value = serde_json::from_slice(&enc.event(&event(input))).unwrap();
        assert_eq!(v["decision_id"], "07070707-0707-0707-0707-070707070707");
        assert_eq!(v["labels"]["id"], "01010101-0101-0101-0101-010101010101");
        assert_eq!(v["labels"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["path"], "permit/root");
        assert_eq!(v["input"]["user"]["key"], "u");
        assert_eq!(v["result"]["allow"], true);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:01.500000000Z");
        assert_eq!(v["metrics"]["timer_server_handler_ns"], 4200);
        assert!(v.get("masked").is_none());
    }

    #[test]
    fn masks_replace_values_in_objects_arrays_and_every_check_of_a_bulk() {
        let masks = [
            "/user/attributes/ssn",
            "/evaluations/*/subject/id",
            "/nowhere",
        ]
        .map(|p| Mask::parse(p).unwrap())
        .to_vec();
        let enc = Encoder::new(&uuid::Uuid::nil(), masks);
        let one = r#"{"user": {"key": "u", "attributes": {"ssn": "123", "age": 3}}}"#;
        let v: Value = serde_json::from_slice(&enc.event(&event(one))).unwrap();
        assert_eq!(v["input"]["user"]["attributes"]["ssn"], MASKED);
        assert_eq!(v["input"]["user"]["attributes"]["age"], 3);
        assert_eq!(
            v["masked"],
            serde_json::json!(["/input/user/attributes/ssn"])
        );
        let bulk =
            r#"[{"user": {"attributes": {"ssn": "1"}}}, {"user": {"attributes": {"ssn": "2"}}}]"#;
        let text = String::from_utf8(enc.event(&event(bulk))).unwrap();
        assert!(!text.contains("\"1\"") && !text.contains("\"2\""), "{text}");
        let batch = r#"{"evaluations": [{"subject": {"id": "a"}}, {"subject": {"id": "b"}}]}"#;
        let v: Value = serde_json::from_slice(&enc.event(&event(batch))).unwrap();
        assert_eq!(v["input"]["evaluations"][1]["subject"]["id"], MASKED);
        assert!(Mask::parse("user/ssn").is_err());
        assert!(Mask::parse("/").is_err());
        assert_eq!(Mask::parse("/a~1b/c~0d").unwrap().tokens, ["a/b", "c~d"]);
    }

    #[test]
    fn chunks_stay_within_the_limit_and_hold_every_event_once() {
        let enc = Encoder::new(&uuid::Uuid::nil(), Vec::new());
        let mut chunker = Chunker::new(4096);
        let events: Vec<Vec<u8>> = (0..2_000)
            .map(|i| {
                let input = format!(
                    r#"{{"user": "user-{i}-{}", "action": "read"}}"#,
                    i * 7919 % 1000
                );
                enc.event(&event(&input))
            })
            .collect();
        // Letters that do not repeat in any pattern gzip can use.
        let mut x: u32 = 1;
        let noise: String = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        let huge = enc.event(&event(&format!(r#"{{"user": "{noise}"}}"#)));
        let mut all = events.clone();
        all.push(huge);
        let (chunks, too_large) = chunker.pack(all);
        assert_eq!(too_large, 1);
        let mut seen = 0;
        for c in &chunks {
            assert!(c.gz.len() <= 4096, "{}", c.gz.len());
            let mut text = String::new();
            GzDecoder::new(&c.gz[..]).read_to_string(&mut text).unwrap();
            let arr: Vec<Value> = serde_json::from_str(&text).unwrap();
            assert_eq!(arr.len(), c.events);
            seen += c.events;
        }
        assert_eq!(seen, 2_000);
        // Packed, not one event a chunk.
        assert!(chunks.len() < 100, "{} chunks", chunks.len());
    }
}
