//! Test harness: throw-away network namespaces and helpers that drive the built plugins.
