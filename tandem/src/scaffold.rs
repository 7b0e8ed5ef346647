//! Applications of one's own: `tandem new` lays out a guest application crate on `tandem-rt`
//! (from this checkout), `tandem build` builds one and finds its ELF.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The checkout this `tandem` was built from, where the application's `tandem-rt` is.
const CHECKOUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A new application's files: those of the example in `examples/shared-table`, whose
/// bare-metal flags and linking build script are the built-in application's own.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../examples/shared-table/Cargo.toml")),
    (".cargo/config.toml", include_str!("../../guest-kernel/.cargo/config.toml")),
    ("build.rs", include_str!("../../guest-kernel/build.rs")),
    ("src/main.rs", include_str!("../../examples/shared-table/src/main.rs")),
];

/// What the example's `Cargo.toml` says that a new application says otherwise: its name, and
/// where tandem-rt is (relative to the example, absolute for an application elsewhere).
const EXAMPLE_NAME: &str = "\"shared-table\"";
const EXAMPLE_RT: &str = "\"../../guest-kernel/rt\"";

/// Lays out a new application crate in `dir`, which must not exist or be empty, named after
/// the directory; returns its name.
pub fn new(dir: &Path) -> anyhow::Result<String> {
    let name = dir.file_name().map(|name| name.to_string_lossy().to_lowercase()).unwrap_or_default();
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!("{}: an application is named after its directory, which must be a crate name", dir.display());
    }
    if dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
        bail!("{} exists and is not empty", dir.display());
    }
    let rt = Path::new(CHECKOUT).join("guest-kernel/rt");
    let rt = rt.canonicalize().with_context(|| format!("cannot find tandem-rt at {}", rt.display()))?;
    for (path, example) in FILES {
        let path = dir.join(path);
        let text = example.replace(EXAMPLE_NAME, &format!("\"{name}\"")).replace(EXAMPLE_RT, &format!("{:?}", rt));
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))
            .and_then(|()| std::fs::write(&path, text))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(name)
}

/// Builds the application crate in `dir` (release) with cargo, its output going to stderr,
/// and returns the ELF it made.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    if !dir.join("Cargo.toml").is_file() {
        bail!("{} has no Cargo.toml: not an application crate (`tandem new DIR` makes one)", dir.display());
    }
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(dir).args(["build", "--release", "--message-format=json-render-diagnostics"]);
    // The application's .cargo/config.toml sets its flags and target; these would override it.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cargo.env_remove(var);
    }
    let output = cargo.stderr(Stdio::inherit()).output().context("cannot run cargo")?;
    if !output.status.success() {
        bail!("building {} failed ({})", dir.display(), output.status);
    }
    let executables: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .collect();
    match executables.as_slice() {
        [elf] => Ok(elf.clone()),
        [] => bail!("building {} made no executable", dir.display()),
        _ => bail!("building {} made {} executables; an application has one", dir.display(), executables.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_application_is_the_example_under_its_own_name_and_with_tandem_rt_from_here() {
        let dir = std::env::temp_dir().join(format!("tandem-new-{}", std::process::id())).join("solver");
        assert_eq!(new(&dir).unwrap(), "solver");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert_eq!(manifest.matches("\"solver\"").count(), 2, "the package and its binary:\n{manifest}");
        let rt = Path::new(CHECKOUT).join("guest-kernel/rt").canonicalize().unwrap();
        assert!(manifest.contains(&format!("tandem-rt = {{ path = {:?} }}", rt)), "{manifest}");
        assert!(!manifest.contains("shared-table") && !manifest.contains("../"), "{manifest}");
        for (path, _) in FILES {
            assert!(dir.join(path).is_file(), "{path}");
        }
        assert!(new(&dir).unwrap_err().to_string().contains("not empty"));
        assert!(new(&dir.with_file_name("Not A Crate")).is_err());
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
