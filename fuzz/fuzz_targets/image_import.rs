//! Importing an OCI layout or `docker save` archive
//! (`airlock_template::source::unpack_image`), as root: the outer archive
//! is unpacked aside, then each layer is applied with whiteouts.
//!
//! Input: a first byte `R` makes the rest the outer archive itself (to
//! reach `index.json` and blob lookup); otherwise two bytes give the
//! length of a first layer tar and the rest is a second one, wrapped here
//! in a `docker save` archive. Properties: no panic; nothing outside the
//! root and the scratch directory changes (the arena around them, with
//! the archive itself, is compared before and after).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static BASE: OnceLock<PathBuf> = OnceLock::new();

fn docker_save(layers: &[&[u8]]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let names: Vec<String> = (0..layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{ "Config": "c.json", "Layers": names }])).expect("json");
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).expect("append");
    };
    add("manifest.json", &manifest);
    for (n, l) in names.iter().zip(layers) {
        add(n, l);
    }
    b.into_inner().expect("tar")
}

fuzz_target!(|data: &[u8]| {
    let archive = match data.split_first() {
        Some((b'R', rest)) => rest.to_vec(),
        _ if data.len() >= 2 => {
            let n = (u16::from_be_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
            let (a, b) = data[2..].split_at(n);
            docker_save(&[a, b])
        }
        _ => return,
    };
    let base = BASE.get_or_init(airlock_fuzz::jail);
    let arena = airlock_fuzz::arena(base);
    let image = arena.path().join("image.tar");
    std::fs::write(&image, &archive).expect("write");
    let (root, scratch) = (arena.path().join("a/root"), arena.path().join("b/blobs"));
    std::fs::create_dir_all(&root).expect("mkdir");
    let skip = ["a/root", "b"];
    let before = airlock_fuzz::snapshot(arena.path(), &skip);
    let _ = airlock_template::source::unpack_image(&image, &root, &scratch);
    airlock_fuzz::assert_same(&before, &airlock_fuzz::snapshot(arena.path(), &skip), "the image changed things outside its root");
});
