//! Directory hashes against `debugfs dx_hash` for all six variants, on
//! hundreds of random names (bytes ≥ 0x80 included, up to 255 bytes).

use std::process::Command;

use ext4kit_format::{HashVersion, dirhash};
use rand::{Rng, SeedableRng};

use crate::fixtures;

fn uuid_string(seed: &[u32; 4]) -> String {
    let mut b = [0u8; 16];
    for (i, w) in seed.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    crate::superblock::fmt_uuid(&b)
}

fn random_name(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => 255,
        1..=3 => rng.random_range(1..=8),
        4..=6 => rng.random_range(9..=40),
        _ => rng.random_range(41..=254),
    };
    (0..len)
        .map(|i| {
            loop {
                let b: u8 = if rng.random_bool(0.5) {
                    rng.random_range(0x80..=0xFF)
                } else {
                    rng.random_range(0x21..0x7F)
                };
                // Characters debugfs's command parser treats specially.
                // (a leading '-' would be read as an option, a leading '#' as a comment)
                if b != b'"' && b != b'/' && !(i == 0 && (b == b'-' || b == b'#')) {
                    break b;
                }
            }
        })
        .collect()
}

#[test]
fn dirhash_matches_debugfs_dx_hash() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let seeds: Vec<[u32; 4]> = vec![
        [0; 4],
        [rng.random(), rng.random(), rng.random(), rng.random()],
        [1, 2, 3, 4],
    ];
    let mut cmds = Vec::new();
    let mut expect = Vec::new();
    for i in 0..400 {
        let name = random_name(&mut rng);
        let seed = seeds[i % seeds.len()];
        for (code, v) in HashVersion::ALL.iter().enumerate() {
            let alg = match code {
                0 => "legacy".to_string(),
                1 => "half_md4".to_string(),
                2 => "tea".to_string(),
                n => n.to_string(),
            };
            let mut line = format!("dx_hash -h {alg} -s {} ", uuid_string(&seed)).into_bytes();
            line.extend_from_slice(&name);
            line.push(b'\n');
            cmds.extend_from_slice(&line);
            expect.push((name.clone(), *v, dirhash(&name, *v, &seed).unwrap()));
        }
    }
    let dir = fixtures::temp_dir();
    let cmdfile = dir.join("hash-cmds");
    std::fs::write(&cmdfile, &cmds).unwrap();
    let out = Command::new("debugfs")
        .arg("-f")
        .arg(&cmdfile)
        .arg(&img.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = out.stdout;
    let mut got = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        if !line.starts_with(b"Hash of ") {
            continue;
        }
        let s = String::from_utf8_lossy(line);
        let tail = s.rsplit(" is 0x").next().unwrap();
        let (major, minor) = tail.split_once(" (minor 0x").unwrap();
        got.push((
            u32::from_str_radix(major, 16).unwrap(),
            u32::from_str_radix(minor.trim_end_matches(')'), 16).unwrap(),
        ));
    }
    assert_eq!(got.len(), expect.len(), "one debugfs answer per name");
    let mut differ = 0;
    for ((name, v, h), (major, minor)) in expect.iter().zip(&got) {
        assert_eq!(
            (h.major, h.minor),
            (*major, *minor),
            "{v:?} {:?}",
            String::from_utf8_lossy(name)
        );
        if name.iter().any(|&b| b >= 0x80) && *v == HashVersion::HalfMd4 {
            let u = dirhash(name, HashVersion::HalfMd4Unsigned, &[0; 4]).unwrap();
            let s = dirhash(name, HashVersion::HalfMd4, &[0; 4]).unwrap();
            differ += usize::from(u != s);
        }
    }
    assert!(
        differ > 100,
        "signed and unsigned variants should differ on high bytes ({differ})"
    );
}
