//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod core;
mod example;
mod interop;
mod oci;
mod safety;
mod tarball;
