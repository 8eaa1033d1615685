//! The template recipe parser (`airlock_template::recipe::parse`).
//!
//! Properties: no panic; a parsed recipe has a `FROM`, before anything but
//! `ARG`s; `WORKDIR`s are absolute; `ENV` names are valid variable names;
//! `COPY` has a source and a destination; errors name a line of the text.
#![no_main]

use std::collections::BTreeMap;

use airlock_template::recipe::{describe, parse, Instr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Text before a NUL line is the recipe; after it, `KEY=VALUE` build args.
    let (recipe, args) = text.split_once("\n\0\n").unwrap_or((text, ""));
    let args: BTreeMap<String, String> = args.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    match parse(recipe, &args) {
        Ok(instrs) => {
            let from = instrs.iter().position(|i| matches!(i, Instr::From(_))).expect("a parsed recipe has FROM");
            assert!(instrs[..from].iter().all(|i| matches!(i, Instr::Arg(..))), "only ARG comes before FROM");
            for i in &instrs {
                match i {
                    Instr::Workdir(w) => assert!(w.starts_with('/')),
                    Instr::Env(pairs) => {
                        for (k, _) in pairs {
                            assert!(!k.is_empty() && !k.starts_with(|c: char| c.is_ascii_digit()) && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{k:?}");
                        }
                    }
                    Instr::Copy { srcs, .. } => assert!(!srcs.is_empty()),
                    _ => {}
                }
                let _ = describe(i);
            }
            assert_eq!(parse(recipe, &args).ok(), Some(instrs), "parsing is deterministic");
        }
        Err(e) => assert!(e.line >= 1 && e.line <= recipe.lines().count().max(1), "line {} of {}", e.line, recipe.lines().count()),
    }
});
