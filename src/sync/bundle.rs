//! Bundles (docs/fleet.md): what a hub PDP sends its followers, and what
//! `pdp export` writes for a static server. A full bundle carries the
//! document in the backup's sealed form and the writes served over it; a
//! delta carries the writes served since a version the follower names.
//!
//! Layout:
//!
//! ```text
//! magic   8  b"PDPBNDL\n"
//! mac     32 keyed blake3 of everything after it
//! length  4  the header's length, little-endian
//! header     JSON: kind, version, from (a delta's base version),
//!            environment, base_len
//! base       base_len bytes: a backup file (full bundles only), which
//!            also carries its own MAC
//! writes     JSON array of writes, to the end
//! ```
//!
//! The MAC's key is derived from the environment API key, for this purpose
//! alone, so a follower accepts bundles only from a PDP holding the same
//! key; the environment in the header (and in the backup inside) lets it
//! refuse another environment's data even under a shared key.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::backup::BackupKey;
use crate::snapshot::Write;

/// The bundle's media type.
pub const MEDIA_TYPE: &str = "application/vnd.pdp.bundle";
const MAGIC: &[u8; 8] = b"PDPBNDL\n";
const MAC_LEN: usize = 32;
/// The largest header read: a few ids.
const MAX_HEADER: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Full,
    Delta,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Delta => "delta",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    kind: Kind,
    version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    environment: String,
    base_len: u64,
}

/// A bundle as read.
#[derive(Debug)]
pub struct Bundle {
    pub kind: Kind,
    /// The version it brings the follower to.
    pub version: String,
    /// A delta's: the version it applies to.
    pub from: Option<String>,
    pub environment: String,
    /// A full bundle's document: a backup file's bytes.
    pub base: Option<Bytes>,
    pub writes: Vec<Write>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a PDP bundle ({0})")]
    NotABundle(&'static str),
    #[error("the bundle was not made with this API key (another environment's, a rotated key's, or altered)")]
    Unauthenticated,
    #[error("the bundle is malformed: {0}")]
    Malformed(String),
}

fn mac_key(key: &BackupKey) -> [u8; 32] {
    key.subkey("pdp 2026-12 bundle authentication")
}

/// Encodes a bundle. `base` is a backup file's bytes (full bundles).
pub fn encode(
    key: &BackupKey,
    kind: Kind,
    version: &str,
    from: Option<&str>,
    environment: &str,
    base: Option<&[u8]>,
    writes: &[Write],
) -> Vec<u8> {
    let header = Header {
        kind,
        version: version.to_owned(),
        from: from.map(str::to_owned),
        environment: environment.to_owned(),
        base_len: base.map_or(0, |b| b.len() as u64),
    };
    // A struct of strings and a number, and writes of JSON values: these
    // encodings cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let writes = serde_json::to_vec(writes).unwrap_or_default();
    let base = base.unwrap_or_default();
    let mut out =
        Vec::with_capacity(MAGIC.len() + MAC_LEN + 4 + header.len() + base.len() + writes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; MAC_LEN]);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(base);
    out.extend_from_slice(&writes);
    let mac = blake3::keyed_hash(&mac_key(key), &out[MAGIC.len() + MAC_LEN..]);
    out[MAGIC.len()..MAGIC.len() + MAC_LEN].copy_from_slice(mac.as_bytes());
    out
}

/// Decodes and authenticates a bundle. The document inside a full bundle
/// is checked again when it is decoded as a backup.
pub fn decode(bytes: Bytes, key: &BackupKey) -> Result<Bundle, BundleError> {
    if bytes.len() < MAGIC.len() + MAC_LEN + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BundleError::NotABundle("bad magic"));
    }
    let mac = &bytes[MAGIC.len()..MAGIC.len() + MAC_LEN];
    let signed = &bytes[MAGIC.len() + MAC_LEN..];
    let expected = blake3::keyed_hash(&mac_key(key), signed);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes().as_slice(),
        mac,
    )) {
        return Err(BundleError::Unauthenticated);
    }
    let header_len = u32::from_le_bytes(signed[..4].try_into().expect("four bytes")) as usize;
    if header_len > MAX_HEADER || signed.len() < 4 + header_len {
        return Err(BundleError::Malformed(format!(
            "header of {header_len} bytes"
        )));
    }
    let header: Header = serde_json::from_slice(&signed[4..4 + header_len])
        .map_err(|e| BundleError::Malformed(format!("header: {e}")))?;
    let start = MAGIC.len() + MAC_LEN + 4 + header_len;
    let rest = bytes.len() - start;
    let base_len = usize::try_from(header.base_len)
        .ok()
        .filter(|&n| n <= rest)
        .ok_or_else(|| BundleError::Malformed(format!("a base of {} bytes", header.base_len)))?;
    match (header.kind, base_len, &header.from) {
        (Kind::Full, 0, _) => {
            return Err(BundleError::Malformed(
                "a full bundle without its document".into(),
            ))
        }
        (Kind::Full, _, Some(_)) => {
            return Err(BundleError::Malformed(
                "a full bundle with a base version".into(),
            ))
        }
        (Kind::Delta, 0, Some(_)) => {}
        (Kind::Delta, _, _) => {
            return Err(BundleError::Malformed(
                "a delta needs a base version and no document".into(),
            ))
        }
        (Kind::Full, _, None) => {}
    }
    let base = (base_len > 0).then(|| bytes.slice(start..start + base_len));
    let writes: Vec<Write> = serde_json::from_slice(&bytes[start + base_len..])
        .map_err(|e| BundleError::Malformed(format!("writes: {e}")))?;
    Ok(Bundle {
        kind: header.kind,
        version: header.version,
        from: header.from,
        environment: header.environment,
        base,
        writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;
    use crate::snapshot::Assignment;

    fn key(k: &str) -> BackupKey {
        BackupKey::derive(&ApiKey::new(k))
    }

    fn assign(user: &str) -> Write {
        Write::Assign(Assignment {
            user: user.into(),
            role: "viewer".into(),
            tenant: "default".into(),
            resource_instance: None,
        })
    }

    #[test]
    fn a_bundle_round_trips_under_its_key_only() {
        let k = key("permit_key_a");
        let full = encode(
            &k,
            Kind::Full,
            "v2",
            None,
            "env-1",
            Some(b"BASE"),
            &[assign("u")],
        );
        let b = decode(full.clone().into(), &k).unwrap();
        assert_eq!(b.kind, Kind::Full);
        assert_eq!(b.version, "v2");
        assert_eq!(b.environment, "env-1");
        assert_eq!(b.base.as_deref(), Some(&b"BASE"[..]));
        assert_eq!(b.writes, vec![assign("u")]);

        assert!(matches!(
            decode(full.clone().into(), &key("permit_key_b")),
            Err(BundleError::Unauthenticated)
        ));
        let mut altered = full;
        let last = altered.len() - 3;
        altered[last] ^= 1;
        assert!(matches!(
            decode(altered.into(), &k),
            Err(BundleError::Unauthenticated)
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"<html>not found</html>"), &k),
            Err(BundleError::NotABundle(_))
        ));
    }

    #[test]
    fn a_delta_names_its_base_and_carries_no_document() {
        let k = key("permit_key_a");
        let delta = encode(
            &k,
            Kind::Delta,
            "v3",
            Some("v2"),
            "env-1",
            None,
            &[assign("w")],
        );
        let b = decode(delta.into(), &k).unwrap();
        assert_eq!((b.kind, b.from.as_deref()), (Kind::Delta, Some("v2")));
        assert!(b.base.is_none());
        let bad = encode(&k, Kind::Delta, "v3", None, "env-1", None, &[]);
        assert!(matches!(
            decode(bad.into(), &k),
            Err(BundleError::Malformed(_))
        ));
        let bad = encode(&k, Kind::Full, "v3", None, "env-1", None, &[]);
        assert!(matches!(
            decode(bad.into(), &k),
            Err(BundleError::Malformed(_))
        ));
    }
}
