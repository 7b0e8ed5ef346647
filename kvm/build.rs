//! Builds the guest (its own cargo workspace, bare-metal flags, own target dir): the library
//! `tandem-rt` and the built-in programs on it, the application `tandem-guest`, whose ELF it
//! puts in OUT_DIR, where `image::DEFAULT_GUEST` embeds it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("kvm lives in the workspace root");
    let guest_dir = root.join("guest-kernel");
    // A target dir of its own: sharing the outer build's would deadlock on its lock.
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("guest-kernel");

    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // The guest's .cargo/config.toml is read from the working directory.
    cargo.current_dir(&guest_dir).arg("build").arg("--release").arg("--target-dir").arg(&target_dir);
    // The outer build's flags and target are for the host; the guest has its own.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cargo.env_remove(var);
    }
    let output = cargo.output().expect("cannot run cargo to build the guest");
    if !output.status.success() {
        panic!("building the guest failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }

    let elf = target_dir.join("x86_64-unknown-linux-gnu/release/tandem-guest");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("tandem-guest.elf");
    fs::copy(&elf, &out).unwrap_or_else(|e| panic!("cannot copy {}: {e}", elf.display()));

    for input in [
        "guest-kernel/src",
        "guest-kernel/Cargo.toml",
        "guest-kernel/build.rs",
        "guest-kernel/.cargo/config.toml",
        "guest-kernel/rt/src",
        "guest-kernel/rt/Cargo.toml",
        "guest-kernel/rt/build.rs",
        "pv-abi/src",
        "pv-abi/Cargo.toml",
        "workloads/src",
        "workloads/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", Path::new(root).join(input).display());
    }
}
