//! Benchmarks live in the `[[bench]]` targets of this package and in the scripts beside them.
