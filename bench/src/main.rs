//! Placeholder: the benchmark driver is being written.

fn main() {}
