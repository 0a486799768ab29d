//! Runs the library examples (`examples/read_file.rs`, `examples/write_file.rs`) as part of
//! the ordinary test run: each example file carries a `#[test]` that runs it on a temporary
//! image (which is also what `cargo test --examples` runs); including them here runs those
//! tests with the others.

#[allow(dead_code)]
#[path = "../examples/read_file.rs"]
mod read_file;

#[allow(dead_code)]
#[path = "../examples/write_file.rs"]
mod write_file;
