//! The backup (and bundle) decoder. The first byte chooses: the input as a
//! whole file, which the authentication should refuse before anything is
//! decoded; or the input as the data of a backup sealed with the right key,
//! which gets past it to the bincode decoder and the snapshot build.
//!
//! `backup --write-seeds DIR` writes the two seeds (a real backup of the
//! small seed document, whole and as data) and exits.

use pdp::config::ApiKey;
use pdp::snapshot::{Snapshot, Staged};
use pdp::sync::{decode_backup, frame, write_backup, BackupKey, Seal};

/// The backup header's length: what `frame` puts before the data.
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 64 + 32;

fn write_seeds(dir: &std::path::Path, seal: &Seal) {
    let doc = include_str!("../seeds/document/small.json");
    let staged = Staged::from_json_str(doc).expect("the seed document parses");
    let tmp = std::env::temp_dir().join(format!("pdp-fuzz-seeds-{}", std::process::id()));
    let file = write_backup(&tmp, &staged, seal).expect("a backup");
    let bytes = std::fs::read(&file).expect("the backup reads");
    std::fs::remove_dir_all(&tmp).expect("cleaned up");
    std::fs::create_dir_all(dir).expect("the seed directory");
    let seed = |mode: u8, data: &[u8]| [&[mode][..], data].concat();
    std::fs::write(dir.join("whole"), seed(0, &bytes)).expect("a seed");
    std::fs::write(dir.join("data"), seed(1, &bytes[HEADER_LEN..])).expect("a seed");
}

fn main() {
    let key = BackupKey::derive(&ApiKey::new("fuzz-key"));
    let seal = Seal {
        key: key.clone(),
        environment: "fuzz-env".to_owned(),
    };
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir] = args.as_slice() {
        if flag == "--write-seeds" {
            write_seeds(std::path::Path::new(dir), &seal);
            return;
        }
    }
    afl::fuzz!(|data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let bytes = if mode & 1 == 0 {
            rest.to_vec()
        } else {
            frame(rest, &seal, 1_700_000_000).expect("the environment fits")
        };
        if let Ok(backup) = decode_backup(&bytes, &key) {
            let _ = Snapshot::from_staged(backup.staged);
        }
    });
}
