//! Procedural macros for eventforge.
//!
//! This crate will hold `#[task]`, which turns an async or sync function into
//! an observable task value that can be called directly or triggered from its
//! topic, and later `#[service]`. It holds no macro yet: tasks are not part
//! of this release.
