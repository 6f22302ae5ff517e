//! The `run` action.
