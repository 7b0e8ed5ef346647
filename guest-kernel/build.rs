//! Links the application with tandem-rt's linker script (a dependency's link arguments do not
//! reach the binary, so the library hands the script's path over as `links` metadata).
fn main() {
    let script = std::env::var("DEP_TANDEM_RT_LINKER_SCRIPT").expect("tandem-rt is a dependency");
    println!("cargo:rustc-link-arg-bins=-T{script}");
}
