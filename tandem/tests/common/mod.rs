//! What the end-to-end test files share: whether KVM tests run, and `tandem` as a child
//! process ([`process`]).
// Each test file uses the part it needs (`top`'s boots no guest).
#![allow(dead_code)]

/// Whether KVM tests should run: true with a usable /dev/kvm; without one, false if
/// TANDEM_SKIP_KVM=1 asks to skip (and says so), else a loud failure.
pub fn kvm_available() -> bool {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() {
        return true;
    }
    if std::env::var("TANDEM_SKIP_KVM").as_deref() == Ok("1") {
        eprintln!("skipping: /dev/kvm is not usable and TANDEM_SKIP_KVM=1");
        return false;
    }
    panic!("/dev/kvm is missing or not accessible; set TANDEM_SKIP_KVM=1 to skip the KVM tests");
}

pub mod process;
pub mod tmux;
