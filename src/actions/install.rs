//! The `install` action.
