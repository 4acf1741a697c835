//! Reading `-f` arguments: files, folders and standard input.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// One input file's name and text.
pub struct Input {
    pub name: String,
    pub text: String,
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read folder {}", dir.display()))?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_manifest(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads every `-f` argument: a file, a folder (its *.yaml, *.yml and *.json
/// files, recursively, in name order) or `-` (standard input, once).
pub fn read_inputs(args: &[String]) -> anyhow::Result<Vec<Input>> {
    let mut out = Vec::new();
    let mut stdin_read = false;
    for arg in args {
        if arg == "-" {
            anyhow::ensure!(!stdin_read, "`-f -` may be given once");
            stdin_read = true;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            out.push(Input {
                name: "-".into(),
                text,
            });
            continue;
        }
        let path = Path::new(arg);
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {arg}"))?;
        let paths = if meta.is_dir() {
            let mut v = Vec::new();
            walk(path, &mut v)?;
            anyhow::ensure!(
                !v.is_empty(),
                "folder {arg} holds no .yaml, .yml or .json file"
            );
            v
        } else {
            vec![path.to_path_buf()]
        };
        for p in paths {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            out.push(Input {
                name: p.display().to_string(),
                text,
            });
        }
    }
    Ok(out)
}
