//! The spec as YAML gives it: shape only, no I/O.
