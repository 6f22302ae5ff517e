//! Integration tests: the built binary, driven in temp dirs.

mod util;

mod distro;
mod example;
