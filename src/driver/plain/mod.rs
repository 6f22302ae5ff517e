//! The plain driver: snapshots are directory copies under `storedir`.
