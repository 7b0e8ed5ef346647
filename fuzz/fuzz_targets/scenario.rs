//! The scenario file parser and its checks: any text is a scenario or an error naming the
//! file; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem_core::scenario::{Scenario, Target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for target in [Target::Host, Target::Sim] {
        match Scenario::parse_for(Path::new("fuzz.toml"), text, target) {
            Ok(scenario) => {
                let _ = scenario.topology();
                let _ = scenario.vms.iter().map(|vm| vm.vm_config(1.0)).count();
            }
            Err(error) => assert!(error.to_string().starts_with("fuzz.toml"), "{error}"),
        }
    }
});
