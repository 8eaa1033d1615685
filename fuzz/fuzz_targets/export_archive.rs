//! Reading an export archive (`airlock_template::archive::read`): the
//! zstd-compressed tar a sandbox's state moves between hosts in, unpacked
//! as root.
//!
//! The input is the tar (compressed here, so the fuzzer works on tar
//! structure). Properties: no panic; nothing outside the destination is
//! created, removed, written, chmod-ed, chown-ed, touched or hard-linked
//! (the arena around it is compared before and after); a successful read
//! returns the first entry's bytes as the manifest and leaves only
//! `root/` and `usr/` in the destination.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static BASE: OnceLock<PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let base = BASE.get_or_init(airlock_fuzz::jail);
    let arena = airlock_fuzz::arena(base);
    let dest = arena.path().join("dest");
    let before = airlock_fuzz::snapshot(arena.path(), &["dest"]);
    let archive = zstd::encode_all(data, 1).expect("zstd");
    let r = airlock_template::archive::read(&archive[..], &dest, 1 << 20);
    airlock_fuzz::assert_same(&before, &airlock_fuzz::snapshot(arena.path(), &["dest"]), "the archive changed things outside its destination");
    if let Ok(manifest) = r {
        let first = tar::Archive::new(data).entries().ok().and_then(|mut e| e.next()).and_then(|e| e.ok()).map(|mut e| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).map(|_| v).unwrap_or_default()
        });
        assert_eq!(Some(manifest), first);
        let mut top: Vec<String> = std::fs::read_dir(&dest).expect("dest").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        top.sort();
        assert_eq!(top, ["root", "usr"]);
    }
});
