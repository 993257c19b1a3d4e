//! Writes a generated data document (and, for the load test, request bodies).
//!
//! ```text
//! cargo run --release -p pdp-devkit --bin gen -- --preset large --seed 7 --out env.json \
//!     [--load-dir DIR [--queries 20000]] [--backup-dir DIR --api-key KEY]
//! ```
//!
//! `--backup-dir` also writes the document as the PDP's offline backup
//! (`pdp::sync::write_backup`), sealed with `--api-key` (the key the PDP
//! will run with, which must match), for timing a start from a backup;
//! `--out` may then be left out.
//!
//! `--load-dir` writes one request body per line, for `benches/load/*.lua`:
//! `allowed.jsonl` (the mixed `/allowed` queries), `bulk.jsonl` (arrays of 100
//! of them for `/allowed/bulk`), `bulk_filter.jsonl` (bulk bodies of one user
//! and action on 100 files, the shape of the Python SDK's `filter_objects`)
//! and `user_permissions.jsonl`, plus
//! `expected.txt` (how many queries the generator expects allowed) and
//! `meta.env` (the document's sizes, for per-assignment figures).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use pdp_devkit::gen::{generate, user_permissions_body, GenSpec, QueryMix};

struct Args {
    spec: GenSpec,
    out: Option<PathBuf>,
    load_dir: Option<PathBuf>,
    backup_dir: Option<PathBuf>,
    api_key: Option<String>,
    queries: usize,
}

fn parse() -> Result<Args, String> {
    let mut preset = "small".to_string();
    let mut seed = None;
    let mut out = None;
    let mut load_dir = None;
    let mut backup_dir = None;
    let mut api_key = None;
    let mut queries = 20_000;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--preset" => preset = value()?,
            "--seed" => seed = Some(value()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--load-dir" => load_dir = Some(PathBuf::from(value()?)),
            "--backup-dir" => backup_dir = Some(PathBuf::from(value()?)),
            "--api-key" => api_key = Some(value()?),
            "--queries" => queries = value()?.parse().map_err(|e| format!("--queries: {e}"))?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let mut spec = GenSpec::preset(&preset)
        .ok_or_else(|| format!("unknown preset {preset} (small, medium, large, rebac_large)"))?;
    if let Some(seed) = seed {
        spec.seed = seed;
    }
    if out.is_none() && backup_dir.is_none() {
        return Err("--out or --backup-dir is required".into());
    }
    if backup_dir.is_some() && api_key.is_none() {
        return Err("--backup-dir needs --api-key: a backup is sealed with the PDP's key".into());
    }
    Ok(Args {
        spec,
        out,
        load_dir,
        backup_dir,
        api_key,
        queries,
    })
}

fn write_lines(path: PathBuf, lines: impl Iterator<Item = String>) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for line in lines {
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

fn run(args: Args) -> std::io::Result<()> {
    let t = Instant::now();
    let doc = generate(&args.spec);
    let generated = t.elapsed();
    eprintln!(
        "gen: {:?}: {} role assignments, {} instances, {} tuples, generated in {:.2?}",
        args.spec,
        doc.role_assignments.len(),
        doc.resource_instances.len(),
        doc.relationship_tuples.len(),
        generated
    );
    if let Some(out) = &args.out {
        let t = Instant::now();
        let mut w = BufWriter::with_capacity(1 << 20, File::create(out)?);
        serde_json::to_writer(&mut w, &doc)?;
        w.flush()?;
        eprintln!("gen: wrote {} in {:.2?}", out.display(), t.elapsed());
    }
    if let (Some(dir), Some(key)) = (&args.backup_dir, &args.api_key) {
        let t = Instant::now();
        let staged = pdp::snapshot::Staged::from_document(&doc);
        let seal = pdp::sync::Seal {
            key: pdp::sync::BackupKey::derive(&pdp::config::ApiKey::new(key.as_str())),
            environment: "generated".to_owned(),
        };
        let path = pdp::sync::write_backup(dir, &staged, &seal)?;
        eprintln!(
            "gen: wrote backup {} in {:.2?}",
            path.display(),
            t.elapsed()
        );
    }

    if let Some(dir) = args.load_dir {
        std::fs::create_dir_all(&dir)?;
        let mut mix = QueryMix::new(&doc, args.spec.seed);
        let queries = mix.mixed(args.queries);
        let allowed = queries.iter().filter(|q| q.expect_allow).count();
        write_lines(
            dir.join("allowed.jsonl"),
            queries.iter().map(|q| q.to_json().to_string()),
        )?;
        write_lines(
            dir.join("bulk.jsonl"),
            queries.chunks_exact(100).map(|c| {
                serde_json::Value::Array(c.iter().map(|q| q.to_json()).collect()).to_string()
            }),
        )?;
        let users = mix.users_with_roles(args.queries.min(5_000));
        write_lines(
            dir.join("user_permissions.jsonl"),
            users.iter().map(|u| user_permissions_body(u).to_string()),
        )?;
        // Drawn last, so the files above stay as they were before it.
        let filter = mix.filter((args.queries / 100).max(1), 100);
        write_lines(
            dir.join("bulk_filter.jsonl"),
            filter.iter().map(|r| {
                serde_json::Value::Array(r.iter().map(|q| q.to_json()).collect()).to_string()
            }),
        )?;
        // Tenant roles alone (the load benchmark's RBAC-only figure); after
        // the others, which it leaves as they were.
        let rbac = mix.rbac(args.queries);
        write_lines(
            dir.join("rbac.jsonl"),
            rbac.iter().map(|q| q.to_json().to_string()),
        )?;
        std::fs::write(
            dir.join("expected.txt"),
            format!("{allowed} of {} queries expected allowed\n", queries.len()),
        )?;
        std::fs::write(
            dir.join("meta.env"),
            format!(
                "ROLE_ASSIGNMENTS={}\nINSTANCES={}\nTUPLES={}\nUSERS={}\n",
                doc.role_assignments.len(),
                doc.resource_instances.len(),
                doc.relationship_tuples.len(),
                doc.users.len()
            ),
        )?;
        eprintln!(
            "gen: {} queries ({allowed} expected allowed) -> {}",
            queries.len(),
            dir.display()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("gen: {e}");
            }
            eprintln!(
                "usage: gen --preset small|medium|large|rebac_large [--seed N] [--out FILE] \
                 [--load-dir DIR] [--queries N] [--backup-dir DIR --api-key KEY]"
            );
            return ExitCode::from(64);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen: {e}");
            ExitCode::FAILURE
        }
    }
}
