//! The offline backup: the last synced environment, so a restart with the
//! control plane unreachable still serves. One file, `BACKUP_FILE`, written
//! atomically (temp file, fsync, rename, fsync of the directory; mode 0600,
//! since it holds the whole environment's users and attributes).
//!
//! Layout, little-endian:
//!
//! ```text
//! magic    8  b"PDPSNAP\n"
//! version  4  FORMAT_VERSION
//! synced   8  unix seconds when the data was read from the control plane
//! length   8  body length in bytes
//! env      64 the environment id, zero-padded
//! mac      32 keyed blake3(version ‖ synced ‖ env ‖ body)
//! body        bincode (standard config) of the staged document
//! ```
//!
//! The MAC's key is derived from the environment API key ([`BackupKey`]):
//! a backup written under another key (another environment's, or this
//! one's before a rotation) or edited by anyone without the key is
//! refused, so a shared or outlived directory never serves another
//! environment's policy and cannot be used to forge one. A file that is
//! short, long, of another version or fails its MAC is refused as a whole:
//! a backup is trusted completely or not at all.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::ApiKey;
use crate::snapshot::Staged;

pub const BACKUP_FILE: &str = "pdp-snapshot.bin";
/// Beside the backup: the last time a sync found the backup's document
/// again, so the backup need not be rewritten to say it is still current.
pub const CONFIRMED_FILE: &str = "pdp-snapshot.confirmed";
const MAGIC: &[u8; 8] = b"PDPSNAP\n";
/// Bump on any change to the layout above or to `Staged`'s encoding.
/// Version 1 held the parsed `DataDocument`; version 2 held each attribute
/// value and profile string inline rather than in a pool; version 3 had an
/// unkeyed checksum and no environment.
const FORMAT_VERSION: u32 = 4;
const ENV_LEN: usize = 64;
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + ENV_LEN + 32;

/// The key that authenticates backups, derived from the environment API
/// key: whoever holds the API key can write and read them, nobody else.
#[derive(Clone)]
pub struct BackupKey([u8; 32]);

impl BackupKey {
    pub fn derive(api_key: &ApiKey) -> BackupKey {
        BackupKey(blake3::derive_key(
            "pdp 2026-12 offline backup authentication",
            api_key.expose().as_bytes(),
        ))
    }
}

impl BackupKey {
    /// A key for another purpose, derived from this one: what authenticates
    /// a journal or a bundle cannot authenticate a backup.
    pub(crate) fn subkey(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(purpose, &self.0)
    }
}

/// What a written backup is sealed with: the key, and the environment the
/// data is from.
#[derive(Clone)]
pub struct Seal {
    pub key: BackupKey,
    pub environment: String,
}

/// The environment id as stored: at most `ENV_LEN` bytes, zero-padded.
fn env_field(environment: &str) -> io::Result<[u8; ENV_LEN]> {
    let bytes = environment.as_bytes();
    if bytes.len() > ENV_LEN || bytes.contains(&0) {
        return Err(io::Error::other(format!(
            "environment id {environment:?} does not fit a backup header"
        )));
    }
    let mut field = [0u8; ENV_LEN];
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(field)
}

/// The MAC so far, before the body. The length is not in it: it must equal
/// the body's, which is.
fn mac_hasher(key: &BackupKey, version: u32, synced: u64, env: &[u8]) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new_keyed(&key.0);
    hasher.update(&version.to_le_bytes());
    hasher.update(&synced.to_le_bytes());
    hasher.update(env);
    hasher
}
/// The largest backup read (about 30 MiB hold a million role assignments).
const MAX_BACKUP_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no backup at {0}")]
    Missing(PathBuf),
    #[error("cannot read backup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("backup {path} is truncated: {found} bytes, expected {expected}")]
    Truncated {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{0} is not a PDP backup (bad magic)")]
    NotABackup(PathBuf),
    #[error("backup {path} has format version {found}; this PDP reads version {expected}")]
    WrongVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("backup {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("backup {path} was not written with this API key (another environment's, a rotated key's, or altered); it is ignored")]
    Unauthenticated { path: PathBuf },
    #[error("backup data was refused by the snapshot builder: {0}")]
    Invalid(String),
}

/// A backup as read: the staged document and when it was synced.
#[derive(Debug)]
pub struct Backup {
    pub staged: Staged,
    pub synced_at: SystemTime,
    /// The environment the data is from.
    pub environment: String,
    /// [`Staged::content_hash`] of the document: the body is exactly the
    /// encoding it hashes, so a restore need not encode it again.
    pub content_hash: String,
}

/// Write `staged` as the backup in `dir` (created if missing), replacing
/// the previous one atomically. Returns the file's path.
pub fn write_backup(dir: &Path, staged: &Staged, seal: &Seal) -> io::Result<PathBuf> {
    write_backup_at(dir, staged, seal, SystemTime::now())
}

/// [`write_backup`], as synced at `synced_at`.
pub fn write_backup_at(
    dir: &Path,
    staged: &Staged,
    seal: &Seal,
    synced_at: SystemTime,
) -> io::Result<PathBuf> {
    prepare_at(dir, staged, seal, synced_at)?.commit()
}

/// A backup written to a temp file beside the real one, not yet in its
/// place: [`Pending::commit`] renames it over the previous backup; dropping
/// it removes the file.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    tmp: Option<PathBuf>,
}

impl Pending {
    pub fn commit(mut self) -> io::Result<PathBuf> {
        let tmp = self.tmp.take().expect("a pending backup has its file");
        let path = self.dir.join(BACKUP_FILE);
        let result = fs::rename(&tmp, &path).and_then(|()| {
            // The rename is durable only once the directory entry is.
            File::open(&self.dir)?.sync_all()
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Writes `staged` to a temp file in `dir` (created if missing), synced as
/// of now.
pub fn prepare(dir: &Path, staged: &Staged, seal: &Seal) -> io::Result<Pending> {
    prepare_at(dir, staged, seal, SystemTime::now())
}

/// Creates `dir` if missing, readable by this user alone: it holds the
/// whole environment.
fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A temp file's name beside `file` in `dir`, unpredictable, so nobody can
/// plant a symlink at it first (it is also opened `create_new`).
fn temp_path(dir: &Path, file: &str) -> PathBuf {
    dir.join(format!(
        ".{file}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Removes temp files a crash left in `dir` (a backup's is as large as the
/// backup). Call once at start, before anything writes there.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = [BACKUP_FILE, CONFIRMED_FILE, JOURNAL_FILE]
            .iter()
            .any(|f| name.starts_with(&format!(".{f}.")));
        if ours && name.ends_with(".tmp") && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn prepare_at(
    dir: &Path,
    staged: &Staged,
    seal: &Seal,
    synced_at: SystemTime,
) -> io::Result<Pending> {
    let env = env_field(&seal.environment)?;
    create_dir(dir)?;
    let tmp = temp_path(dir, BACKUP_FILE);
    match write_file(&tmp, staged, &seal.key, &env, synced_at) {
        Ok(()) => Ok(Pending {
            dir: dir.to_owned(),
            tmp: Some(tmp),
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_file(
    tmp: &Path,
    staged: &Staged,
    key: &BackupKey,
    env: &[u8; ENV_LEN],
    synced_at: SystemTime,
) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    let synced = unix_secs(synced_at);
    let mut hasher = mac_hasher(key, FORMAT_VERSION, synced, env);
    // Stream the body behind a placeholder header, hashing as it goes, so a
    // large environment is not held twice in memory; then fill the header.
    file.write_all(&[0u8; HEADER_LEN])?;
    let mut body = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, &mut file),
        hasher: &mut hasher,
        written: 0,
    };
    bincode::serde::encode_into_std_write(staged, &mut body, bincode::config::standard())
        .map_err(io::Error::other)?;
    body.inner.flush()?;
    let length = body.written;
    drop(body);
    let header = header(synced, length, env, &hasher.finalize());
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header)?;
    file.sync_all()
}

fn header(synced: u64, length: u64, env: &[u8; ENV_LEN], mac: &blake3::Hash) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&synced.to_le_bytes());
    header.extend_from_slice(&length.to_le_bytes());
    header.extend_from_slice(env);
    header.extend_from_slice(mac.as_bytes());
    header
}

/// A backup's bytes in memory around `body`, which should be the bincode
/// of a [`Staged`]: what the fuzz target feeds the decoder, so that its
/// inputs get past the authentication to the data.
pub fn frame(body: &[u8], seal: &Seal, synced: u64) -> io::Result<Vec<u8>> {
    let env = env_field(&seal.environment)?;
    let mut hasher = mac_hasher(&seal.key, FORMAT_VERSION, synced, &env);
    hasher.update(body);
    let mut bytes = header(synced, body.len() as u64, &env, &hasher.finalize());
    bytes.extend_from_slice(body);
    Ok(bytes)
}

/// `staged` sealed as a backup file's bytes, in memory: the document a hub
/// sends in a full bundle, and the backup a follower writes from it.
pub fn seal_staged(staged: &Staged, seal: &Seal, synced_at: SystemTime) -> io::Result<Vec<u8>> {
    let env = env_field(&seal.environment)?;
    let synced = unix_secs(synced_at);
    let mut bytes = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(staged, &mut bytes, bincode::config::standard())
        .map_err(io::Error::other)?;
    let body = &bytes[HEADER_LEN..];
    let mut hasher = mac_hasher(&seal.key, FORMAT_VERSION, synced, &env);
    hasher.update(body);
    let header = header(synced, body.len() as u64, &env, &hasher.finalize());
    bytes[..HEADER_LEN].copy_from_slice(&header);
    Ok(bytes)
}

/// Replaces the backup in `dir` (created if missing) with `bytes`, a whole
/// backup as [`seal_staged`] makes it, atomically as [`write_backup`] does.
pub fn write_backup_bytes(dir: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    create_dir(dir)?;
    replace_private(dir, BACKUP_FILE, |f| f.write_all(bytes))?;
    Ok(dir.join(BACKUP_FILE))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// [`read_backup`] on bytes in memory; errors name no file.
pub fn decode_backup(bytes: &[u8], key: &BackupKey) -> Result<Backup, BackupError> {
    decode(bytes, key).map_err(|e| e.at(PathBuf::from("<memory>")))
}

struct HashingWriter<'a, W> {
    inner: W,
    hasher: &'a mut blake3::Hasher,
    written: u64,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Serialize, Deserialize)]
struct Confirmation {
    content_hash: String,
    confirmed_at: u64,
}

/// Records that a sync at `at` found the document whose content hash is
/// `content_hash` (the backup's) again. Written to a temp file and renamed,
/// so a reader sees the old record or the new one.
pub fn confirm(dir: &Path, content_hash: &str, at: SystemTime) -> io::Result<()> {
    let record = Confirmation {
        content_hash: content_hash.to_owned(),
        confirmed_at: at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    replace_private(dir, CONFIRMED_FILE, |f| {
        Ok(serde_json::to_writer(f, &record)?)
    })
}

/// Replaces `dir/file` with what `write` puts in a temp file beside it
/// (mode 0600, synced, renamed over it, the directory synced), so that a
/// reader sees the old file or the new one; the temp file is removed if
/// anything fails.
pub fn replace_private(
    dir: &Path,
    file: impl AsRef<std::ffi::OsStr>,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let file = file.as_ref();
    let tmp = temp_path(dir, &file.to_string_lossy());
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            write(&mut f)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, dir.join(file)))
        // The rename is durable only once the directory entry is.
        .and_then(|()| File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// When a sync last confirmed the document with `content_hash`, if the
/// record in `dir` is about that document; a record about another one (an
/// older backup's) says nothing.
pub fn confirmed_at(dir: &Path, content_hash: &str) -> Option<SystemTime> {
    let text = fs::read(dir.join(CONFIRMED_FILE)).ok()?;
    let record: Confirmation = serde_json::from_slice(&text).ok()?;
    (record.content_hash == content_hash)
        .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(record.confirmed_at))
}

/// The backup in `dir`, if the file there is a complete, current, intact
/// backup.
pub fn read_backup(dir: &Path, key: &BackupKey) -> Result<Backup, BackupError> {
    let path = dir.join(BACKUP_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BackupError::Missing(path)),
        Err(source) => return Err(BackupError::Io { path, source }),
    };
    // Read no more than a backup can hold: a planted or damaged file the
    // size of the disk must not be read into memory first.
    let too_large = || BackupError::Corrupt {
        path: path.clone(),
        reason: format!("larger than {MAX_BACKUP_BYTES} bytes"),
    };
    match file.metadata() {
        Ok(m) if m.len() > MAX_BACKUP_BYTES => return Err(too_large()),
        Ok(_) => {}
        Err(source) => return Err(BackupError::Io { path, source }),
    }
    let mut bytes = Vec::new();
    if let Err(source) = io::Read::take(file, MAX_BACKUP_BYTES + 1).read_to_end(&mut bytes) {
        return Err(BackupError::Io { path, source });
    }
    if bytes.len() as u64 > MAX_BACKUP_BYTES {
        return Err(too_large());
    }
    decode(&bytes, key).map_err(|e| e.at(path))
}

/// Beside the backup: the writes served through the facts proxy and not
/// yet in a sync's document, so a restart serves them too. Small (pending
/// writes only), rewritten whole after each change; JSON, since a write's
/// attributes are arbitrary JSON values.
pub const JOURNAL_FILE: &str = "pdp-writes.json";

/// What the journal file holds after its MAC.
#[derive(Serialize, Deserialize)]
struct Journal {
    environment: String,
    writes: Vec<crate::snapshot::Write>,
}

/// The largest journal read: pending writes are let go at each sync.
const MAX_JOURNAL_BYTES: u64 = 256 << 20;

/// The journal's MAC key: the backup key's, for another purpose.
fn journal_mac(key: &BackupKey, body: &[u8]) -> blake3::Hash {
    blake3::keyed_hash(&key.subkey("pdp 2026-12 journal of served writes"), body)
}

/// Replaces the journal in `dir` with `writes` (removes it when there are
/// none): 32 bytes of keyed MAC, then the JSON.
pub fn write_journal(dir: &Path, seal: &Seal, writes: &[crate::snapshot::Write]) -> io::Result<()> {
    let path = dir.join(JOURNAL_FILE);
    if writes.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    create_dir(dir)?;
    let body = serde_json::to_vec(&Journal {
        environment: seal.environment.clone(),
        writes: writes.to_vec(),
    })?;
    replace_private(dir, JOURNAL_FILE, |f| {
        f.write_all(journal_mac(&seal.key, &body).as_bytes())?;
        f.write_all(&body)
    })
}

/// The journal in `dir`, if it is authentic and of `environment`; none
/// when there is no journal.
pub fn read_journal(
    dir: &Path,
    key: &BackupKey,
    environment: &str,
) -> Result<Vec<crate::snapshot::Write>, BackupError> {
    let path = dir.join(JOURNAL_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(BackupError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    if let Err(source) = io::Read::take(file, MAX_JOURNAL_BYTES + 1).read_to_end(&mut bytes) {
        return Err(BackupError::Io { path, source });
    }
    if bytes.len() as u64 > MAX_JOURNAL_BYTES || bytes.len() < 32 {
        return Err(BackupError::Corrupt {
            path,
            reason: format!("{} bytes is no journal", bytes.len()),
        });
    }
    let (mac, body) = bytes.split_at(32);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        journal_mac(key, body).as_bytes().as_slice(),
        mac,
    )) {
        return Err(BackupError::Unauthenticated { path });
    }
    let journal: Journal = serde_json::from_slice(body).map_err(|e| BackupError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if journal.environment != environment {
        return Err(BackupError::Corrupt {
            path,
            reason: format!(
                "written for environment {}, the backup is of {environment}",
                journal.environment
            ),
        });
    }
    Ok(journal.writes)
}

/// Failures before the path is attached.
enum DecodeError {
    Truncated { found: u64, expected: u64 },
    NotABackup,
    WrongVersion(u32),
    Corrupt(String),
    Unauthenticated,
}

impl DecodeError {
    fn at(self, path: PathBuf) -> BackupError {
        match self {
            DecodeError::Truncated { found, expected } => BackupError::Truncated {
                path,
                found,
                expected,
            },
            DecodeError::NotABackup => BackupError::NotABackup(path),
            DecodeError::WrongVersion(found) => BackupError::WrongVersion {
                path,
                found,
                expected: FORMAT_VERSION,
            },
            DecodeError::Corrupt(reason) => BackupError::Corrupt { path, reason },
            DecodeError::Unauthenticated => BackupError::Unauthenticated { path },
        }
    }
}

/// The bincode configuration of the data, with a limit on what lengths in
/// it may claim in all: bincode allocates a string's bytes before reading
/// them, so without one a length of 2^60 in an authentic but damaged body
/// was a panic (capacity overflow), found by fuzzing. The limit is the
/// backup's own cap; a real environment claims far less (about 100 MB for
/// a million assignments).
fn decode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_BACKUP_BYTES as usize }>()
}

fn decode(bytes: &[u8], key: &BackupKey) -> Result<Backup, DecodeError> {
    let found = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // A file cut inside the magic looks like a prefix of it.
        return Err(if MAGIC.starts_with(bytes) {
            DecodeError::Truncated {
                found,
                expected: HEADER_LEN as u64,
            }
        } else {
            DecodeError::NotABackup
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            found,
            expected: HEADER_LEN as u64,
        });
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    let field = |at: usize, len: usize| &header[at..at + len];
    let version = u32::from_le_bytes(field(8, 4).try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(DecodeError::WrongVersion(version));
    }
    let synced = u64::from_le_bytes(field(12, 8).try_into().unwrap_or_default());
    let length = u64::from_le_bytes(field(20, 8).try_into().unwrap_or_default());
    // The length is read before the checksum can vouch for it.
    let Some(expected) = length.checked_add(HEADER_LEN as u64) else {
        return Err(DecodeError::Corrupt(format!("a length of {length} bytes")));
    };
    if found < expected {
        return Err(DecodeError::Truncated { found, expected });
    }
    if found > expected {
        return Err(DecodeError::Corrupt(format!(
            "{} bytes after the end of the data",
            found - expected
        )));
    }
    let env = field(28, ENV_LEN);
    let mut hasher = mac_hasher(key, version, synced, env);
    hasher.update(body);
    // blake3's Hash compares in constant time.
    let mac: [u8; 32] = field(28 + ENV_LEN, 32).try_into().unwrap_or_default();
    if hasher.finalize() != blake3::Hash::from(mac) {
        return Err(DecodeError::Unauthenticated);
    }
    let environment = std::str::from_utf8(env)
        .map(|e| e.trim_end_matches('\0').to_owned())
        .map_err(|_| DecodeError::Corrupt("the environment id is not UTF-8".to_owned()))?;
    let (staged, used): (Staged, usize) = bincode::serde::decode_from_slice(body, decode_config())
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Corrupt(
            "data shorter than its length".to_owned(),
        ));
    }
    if !staged.ids_in_range() {
        return Err(DecodeError::Corrupt(
            "a fact names a string the backup does not hold".to_owned(),
        ));
    }
    Ok(Backup {
        staged,
        synced_at: SystemTime::UNIX_EPOCH + Duration::from_secs(synced),
        environment,
        content_hash: blake3::hash(body).to_hex().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn key() -> BackupKey {
        BackupKey::derive(&ApiKey::new("permit_key_a"))
    }

    fn seal() -> Seal {
        Seal {
            key: key(),
            environment: "env-a".to_owned(),
        }
    }

    #[test]
    fn the_stored_hash_is_the_documents_content_hash() {
        let dir = tempfile::tempdir().unwrap();
        write_backup(dir.path(), &doc(), &seal()).unwrap();
        let b = read_backup(dir.path(), &key()).unwrap();
        assert_eq!(b.content_hash, doc().content_hash());
    }

    /// What the backup fuzz target does with one input (fuzz/targets/
    /// backup.rs): an odd first byte frames the rest as authentic data.
    fn fuzz_case(input: &[u8]) -> Result<Backup, BackupError> {
        let Some((&mode, rest)) = input.split_first() else {
            return decode_backup(&[], &key());
        };
        let bytes = if mode & 1 == 0 {
            rest.to_vec()
        } else {
            frame(rest, &seal(), 1_700_000_000).unwrap()
        };
        decode_backup(&bytes, &key())
    }

    /// Inputs the fuzzer crashed the decoder with: authentic bodies whose
    /// string lengths claim more than exists (up to 2^60 bytes), a panic
    /// (capacity overflow) before `decode_config` set a limit. With
    /// `PDP_FUZZ_CRASHES=fuzz/out/backup/default/crashes`, every input in
    /// that directory is replayed too.
    #[test]
    fn damaged_authentic_bodies_are_errors_not_panics() {
        let hex = |h: &str| -> Vec<u8> {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        for case in [
            "650001fd05656469746fe21c786f650001fd05656469746f326c",
            "fdfdfdfdfdfdfdfd02fefdfdfdfdfdfdfdfdfdfdfdfdfdfdfdfdfdfdfdfdfdfc60",
            "fffcfffffffffdffffffff01010101000000ff00fcffffffff0101170100010000000000000000000000000002050600000110",
        ] {
            assert!(fuzz_case(&hex(case)).is_err(), "{case}");
        }
        if let Ok(dir) = std::env::var("PDP_FUZZ_CRASHES") {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("id"))
                {
                    let _ = fuzz_case(&fs::read(&path).unwrap());
                }
            }
        }
    }

    fn doc() -> Staged {
        Staged::from_json_str(
            r#"{"users": [{"key": "alice", "attributes": {"dept": "eng", "level": 3}}],
                "role_assignments": [{"user": "alice", "role": "viewer", "tenant": "default"}],
                "condition_sets": [{"key": "eng", "conditions": {"allOf": [{"user.dept": {"equals": "eng"}}]}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn round_trips_with_its_sync_time() {
        let dir = tempfile::tempdir().unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let path = write_backup_at(dir.path(), &doc(), &seal(), at).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read_backup(dir.path(), &key()).unwrap();
        assert_eq!(back.staged.content_hash(), doc().content_hash());
        assert_eq!(back.synced_at, at);
        // Only the backup remains: no temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_directory_is_private_and_a_crash_leaves_nothing_for_long() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("backups");
        write_backup(&dir, &doc(), &seal()).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // What a crash mid-write leaves, and a file that is not ours.
        fs::write(dir.join(format!(".{BACKUP_FILE}.17.00ff.tmp")), b"half").unwrap();
        fs::write(dir.join(format!(".{CONFIRMED_FILE}.17.tmp")), b"{").unwrap();
        fs::write(dir.join("notes.tmp"), b"keep").unwrap();
        assert_eq!(remove_stale_temps(&dir).unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.tmp", BACKUP_FILE]);
        assert_eq!(remove_stale_temps(&root.path().join("none")).unwrap(), 0);
    }

    #[test]
    fn a_planted_symlink_is_not_followed_by_the_confirmation() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        // The old predictable temp name, planted as a link to another file.
        let planted = dir
            .path()
            .join(format!(".{CONFIRMED_FILE}.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        confirm(dir.path(), "hash", SystemTime::now()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert!(confirmed_at(dir.path(), "hash").is_some());
    }

    #[test]
    fn a_file_over_the_size_limit_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join(BACKUP_FILE)).unwrap();
        // Sparse: no disk is used for it.
        file.set_len(MAX_BACKUP_BYTES + 1).unwrap();
        let err = read_backup(dir.path(), &key()).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn a_pending_backup_replaces_the_old_one_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        write_backup(dir.path(), &doc(), &seal()).unwrap();
        let other = Staged::from_json_str(r#"{"users": [{"key": "bob"}]}"#).unwrap();
        drop(prepare(dir.path(), &other, &seal()).unwrap());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "dropped: no temp file left"
        );
        assert_eq!(
            read_backup(dir.path(), &key()).unwrap().content_hash,
            doc().content_hash()
        );
        prepare(dir.path(), &other, &seal())
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(
            read_backup(dir.path(), &key()).unwrap().content_hash,
            other.content_hash()
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_intact_file_naming_strings_it_lacks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = doc();
        bad.break_an_id();
        write_backup(dir.path(), &bad, &seal()).unwrap();
        let err = read_backup(dir.path(), &key()).unwrap_err();
        assert!(
            matches!(&err, BackupError::Corrupt { reason, .. } if reason.contains("does not hold")),
            "{err}"
        );
    }

    #[test]
    fn missing_is_its_own_case() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_backup(dir.path(), &key()),
            Err(BackupError::Missing(_))
        ));
    }

    #[test]
    fn a_confirmation_counts_for_its_own_document_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(confirmed_at(dir.path(), "h1"), None);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        confirm(dir.path(), "h1", at).unwrap();
        assert_eq!(confirmed_at(dir.path(), "h1"), Some(at));
        assert_eq!(confirmed_at(dir.path(), "h2"), None);
        let later = at + Duration::from_secs(60);
        confirm(dir.path(), "h1", later).unwrap();
        assert_eq!(confirmed_at(dir.path(), "h1"), Some(later));
        fs::write(dir.path().join(CONFIRMED_FILE), b"{not json").unwrap();
        assert_eq!(confirmed_at(dir.path(), "h1"), None);
        // Only the record is left: no temp files.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn another_key_or_a_forger_without_the_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_backup(dir.path(), &doc(), &seal()).unwrap();
        let b = read_backup(dir.path(), &key()).unwrap();
        assert_eq!(b.environment, "env-a");
        // Restored under another environment's key, or this one's rotated.
        let other = BackupKey::derive(&ApiKey::new("permit_key_b"));
        assert!(matches!(
            read_backup(dir.path(), &other),
            Err(BackupError::Unauthenticated { .. })
        ));
        // A forger edits the body and seals it with anything but the key.
        let mut forged = fs::read(&path).unwrap();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let forger = Seal {
            key: BackupKey::derive(&ApiKey::new("guess")),
            environment: "env-a".to_owned(),
        };
        let mut mac = mac_hasher(&forger.key, FORMAT_VERSION, 0, &env_field("env-a").unwrap());
        mac.update(&forged[HEADER_LEN..]);
        forged[28 + ENV_LEN..HEADER_LEN].copy_from_slice(mac.finalize().as_bytes());
        fs::write(&path, &forged).unwrap();
        assert!(matches!(
            read_backup(dir.path(), &key()),
            Err(BackupError::Unauthenticated { .. })
        ));
        // An environment id that cannot be stored is a write error, not a
        // truncated header.
        let long = Seal {
            environment: "e".repeat(65),
            ..seal()
        };
        assert!(write_backup(dir.path(), &doc(), &long).is_err());
    }

    #[test]
    fn every_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_backup(dir.path(), &doc(), &seal()).unwrap();
        let good = fs::read(&path).unwrap();
        let check = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            read_backup(dir.path(), &key()).unwrap_err()
        };
        for cut in [0, 3, 8, HEADER_LEN - 1, HEADER_LEN, good.len() - 1] {
            assert!(
                matches!(check(&good[..cut]), BackupError::Truncated { .. }),
                "cut at {cut}"
            );
        }
        // A flipped bit anywhere the MAC covers: the body, the sync time,
        // the environment, the MAC itself.
        for at in [
            HEADER_LEN,
            good.len() / 2,
            good.len() - 1,
            14,
            30,
            HEADER_LEN - 1,
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert!(
                matches!(check(&bad), BackupError::Unauthenticated { .. }),
                "flip at {at}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(check(&long), BackupError::Corrupt { .. }));
        // A length that overflows once the header is added (it is read
        // before the checksum can vouch for it).
        let mut huge = good.clone();
        huge[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(check(&huge), BackupError::Corrupt { .. }));
        let mut v1 = good.clone();
        v1[8] = 1;
        assert!(matches!(
            check(&v1),
            BackupError::WrongVersion { found: 1, .. }
        ));
        assert!(matches!(
            check(b"{\"users\": []}"),
            BackupError::NotABackup(_)
        ));
    }
}
