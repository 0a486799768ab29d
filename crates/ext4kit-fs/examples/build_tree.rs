//! Builds an image from a directory (profiling / quick checks): build_tree SRC IMG [block_size]
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let bs = a.get(3).and_then(|v| v.parse().ok());
    let t = std::time::Instant::now();
    let r = ext4kit_fs::build::build_image(
        a[1].as_ref(),
        a[2].as_ref(),
        &ext4kit_fs::build::BuildOptions {
            block_size: bs,
            ..Default::default()
        },
        &mut |_| {},
    );
    println!("{:?} in {:.3}s", r, t.elapsed().as_secs_f64());
}
