//! Hypercalls (see `pv_abi::hypercall`): a 4-byte `out` whose port names the call and whose
//! value is the guest address of its argument block. [`decode`] turns one into a typed
//! [`Call`], checking every argument, and is pure; `execute` carries a call out for the VCPU
//! that made it. The VCPU thread writes the result in the block's `ret`, in one place.
//! Nothing outside guest memory is ever read or written, and a bad argument gets an error
//! code, never a monitor crash.

mod decode;
mod execute;

pub use decode::{Call, Request, decode};
pub(crate) use execute::{Caller, Leave, execute};
