//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod core;
mod example;
mod oci;
mod safety;
mod tarball;
