//! Tags: named builds of a template, as E2B's `name:tag` references.
//!
//! A template directory keeps each tagged build's manifest under
//! `builds/<build-id>.json` and the tags in `tags.json` (tag → build). The
//! template's own `template.json` is the build its `default` tag names, so
//! everything that reads a template by name (creates, listings, aliases)
//! sees the default build; `name:tag` reads the tagged one. A template
//! made before tags existed, or by Airlock's own recipe API, has an
//! implicit `default` tag on its one build.
//!
//! Layers are shared and content-addressed, so a tag costs one small
//! manifest; `Store::gc_layers` counts tagged builds' layers as used.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{io, read_json, write_json, Store, Template, TemplateError};

pub const DEFAULT_TAG: &str = "default";
const TAGS_FILE: &str = "tags.json";
const BUILDS_DIR: &str = "builds";

/// Tag changes read, change and write `tags.json`: one at a time in this
/// process (the server is the only writer of its data directory).
static TAGS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tags_lock() -> std::sync::MutexGuard<'static, ()> {
    TAGS_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// One tag of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub tag: String,
    pub build_id: String,
    /// Unix milliseconds: when the tag was pointed at its build.
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TagFile {
    tags: BTreeMap<String, TagRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TagRef {
    build: String,
    at: i64,
}

/// Tags as E2B allows them: 1-128 of letters, digits, `.`, `_`, `-`, not
/// starting with `.` or `-`.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty() && t.len() <= 128 && t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) && !t.starts_with(['.', '-'])
}

/// A build id as E2B's (a UUID), for builds that never had one: derived
/// from the template's name and content, so it is stable.
fn implicit_build_id(t: &Template) -> String {
    let h = Sha256::digest(format!("{}\0{}\0{}", t.name, t.digest, t.created_at));
    let x: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-4{}-8{}-{}", &x[..8], &x[8..12], &x[13..16], &x[17..20], &x[20..32])
}

/// `name:tag` split at the last colon (tags have no colon).
pub fn split_ref(r: &str) -> (&str, Option<&str>) {
    match r.rsplit_once(':') {
        Some((n, t)) if !n.is_empty() => (n, Some(t)),
        _ => (r, None),
    }
}

impl Store {
    fn tags_path(&self, name: &str) -> PathBuf {
        self.dir().join(name).join(TAGS_FILE)
    }

    fn build_path(&self, name: &str, build: &str) -> PathBuf {
        self.dir().join(name).join(BUILDS_DIR).join(format!("{build}.json"))
    }

    /// The tag file, or the implicit one (`default` on the template's own
    /// build) when it has none.
    fn tag_file(&self, t: &Template) -> TagFile {
        match read_json::<TagFile>(&self.tags_path(&t.name)) {
            Ok(f) => f,
            Err(_) => {
                let mut f = TagFile::default();
                f.tags.insert(DEFAULT_TAG.into(), TagRef { build: implicit_build_id(t), at: t.created_at });
                f
            }
        }
    }

    /// Makes the implicit tag file real (the template's build kept under
    /// its id), so tags can be pointed at it.
    fn materialise(&self, t: &Template) -> Result<TagFile, TemplateError> {
        let f = self.tag_file(t);
        if !self.tags_path(&t.name).exists() {
            let id = implicit_build_id(t);
            self.write_build(&t.name, &id, t)?;
            write_json(&self.tags_path(&t.name), &f).map_err(io(format!("writing the tags of {}", t.name)))?;
        }
        Ok(f)
    }

    fn write_build(&self, name: &str, build: &str, t: &Template) -> Result<(), TemplateError> {
        let p = self.build_path(name, build);
        fs::create_dir_all(p.parent().unwrap_or(&self.dir())).map_err(io(format!("creating the builds of {name}")))?;
        write_json(&p, t).map_err(io(format!("writing build {build} of {name}")))
    }

    /// The manifest of one build (the template's own when its id is the
    /// implicit one).
    fn read_build(&self, base: &Template, build: &str) -> Option<Template> {
        let mut t = read_json::<Template>(&self.build_path(&base.name, build)).ok().or_else(|| (build == implicit_build_id(base)).then(|| base.clone()))?;
        // A build answers to its template's name and aliases as they are now.
        t.name = base.name.clone();
        t.aliases = base.aliases.clone();
        t.public = base.public;
        Some(t)
    }

    /// `name:tag` (name or alias): the tagged build, or `None` when the
    /// template or the tag is not there.
    pub(crate) fn get_tagged(&self, name: &str, tag: &str) -> Option<Template> {
        let base = self.get_untagged(name).ok()?;
        let f = self.tag_file(&base);
        let r = f.tags.get(tag)?;
        self.read_build(&base, &r.build)
    }

    /// A template's tags, by tag name.
    pub fn tags(&self, name: &str) -> Result<Vec<Tag>, TemplateError> {
        let base = self.get_untagged(name)?;
        Ok(self.tag_file(&base).tags.into_iter().map(|(tag, r)| Tag { tag, build_id: r.build, created_at: r.at }).collect())
    }

    /// Records a finished build of `t.name` under `build_id` with `tags`
    /// (none: `default`). `template.json` becomes this build when it is
    /// tagged `default` or the template has no default build yet.
    pub fn record_build(&self, t: &Template, build_id: &str, tags: &[String], now_ms: i64) -> Result<(), TemplateError> {
        let _g = tags_lock();
        let tags: Vec<String> = if tags.is_empty() { vec![DEFAULT_TAG.into()] } else { tags.to_vec() };
        if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
            return Err(TemplateError::Invalid(format!("invalid tag {bad:?}: letters, digits, '.', '_' and '-', at most 128")));
        }
        let existing = self.get_untagged(&t.name).ok().filter(|e| e.name == t.name);
        let mut f = match &existing {
            Some(e) => self.materialise(e)?,
            None => TagFile::default(),
        };
        let mut t = t.clone();
        if let Some(e) = &existing {
            t.aliases = e.aliases.clone();
            t.public = e.public;
        }
        self.write_build(&t.name, build_id, &t)?;
        for tag in &tags {
            f.tags.insert(tag.clone(), TagRef { build: build_id.to_string(), at: now_ms });
        }
        // Manifest first, then the tags naming it, then the default.
        write_json(&self.tags_path(&t.name), &f).map_err(io(format!("writing the tags of {}", t.name)))?;
        if tags.iter().any(|x| x == DEFAULT_TAG) || existing.is_none() {
            self.save(&t)?;
        }
        self.prune_builds(&t.name, &f);
        Ok(())
    }

    /// Points `tags` at the build `target` (`name:tag`, or `name` for its
    /// default) names. Returns that build's id.
    pub fn assign_tags(&self, target: &str, tags: &[String], now_ms: i64) -> Result<String, TemplateError> {
        let _g = tags_lock();
        let (name, tag) = split_ref(target);
        let tag = tag.unwrap_or(DEFAULT_TAG);
        if tags.is_empty() {
            return Err(TemplateError::Invalid("no tags to assign".into()));
        }
        if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
            return Err(TemplateError::Invalid(format!("invalid tag {bad:?}: letters, digits, '.', '_' and '-', at most 128")));
        }
        let base = self.get_untagged(name)?;
        let mut f = self.materialise(&base)?;
        let build = f.tags.get(tag).map(|r| r.build.clone()).ok_or_else(|| TemplateError::NotFound(format!("{}:{tag}", base.name)))?;
        let manifest = self.read_build(&base, &build).ok_or_else(|| TemplateError::NotFound(format!("{}:{tag}", base.name)))?;
        for t in tags {
            f.tags.insert(t.clone(), TagRef { build: build.clone(), at: now_ms });
        }
        write_json(&self.tags_path(&base.name), &f).map_err(io(format!("writing the tags of {}", base.name)))?;
        if tags.iter().any(|t| t == DEFAULT_TAG) {
            self.save(&manifest)?;
        }
        self.prune_builds(&base.name, &f);
        Ok(build)
    }

    /// Removes `tags` from template `name`. `default` stays: it is what the
    /// name alone means (delete the template to drop it).
    pub fn remove_tags(&self, name: &str, tags: &[String]) -> Result<(), TemplateError> {
        let _g = tags_lock();
        let base = self.get_untagged(name)?;
        if tags.iter().any(|t| t == DEFAULT_TAG) {
            return Err(TemplateError::Invalid(format!("the default tag is what '{}' alone means: it cannot be removed (delete the template instead)", base.name)));
        }
        let mut f = self.materialise(&base)?;
        if let Some(missing) = tags.iter().find(|t| !f.tags.contains_key(*t)) {
            return Err(TemplateError::NotFound(format!("{}:{missing}", base.name)));
        }
        for t in tags {
            f.tags.remove(t);
        }
        write_json(&self.tags_path(&base.name), &f).map_err(io(format!("writing the tags of {}", base.name)))?;
        self.prune_builds(&base.name, &f);
        Ok(())
    }

    /// Builds no tag names any more go (their layers then go with the
    /// next collection, unless something else uses them).
    fn prune_builds(&self, name: &str, f: &TagFile) {
        let Ok(rd) = fs::read_dir(self.dir().join(name).join(BUILDS_DIR)) else { return };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(id) = n.strip_suffix(".json") else { continue };
            if !f.tags.values().any(|r| r.build == id) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Every tagged build's manifest of the template in directory `dir`
    /// (for the layer collector).
    pub(crate) fn build_manifests(dir: &std::path::Path) -> Vec<Template> {
        let Ok(rd) = fs::read_dir(dir.join(BUILDS_DIR)) else { return Vec::new() };
        rd.flatten().filter_map(|e| read_json::<Template>(&e.path()).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(name: &str, digest: &str) -> Template {
        Template {
            name: name.into(),
            root_layers: vec![PathBuf::from(format!("/layers/{digest}/root"))],
            default_user: "user".into(),
            digest: digest.into(),
            created_at: 1,
            ..Default::default()
        }
    }

    #[test]
    fn tags_name_builds_and_the_default_is_what_the_name_means() {
        let d = tempfile::tempdir().expect("tmp");
        let s = Store::new(d.path().to_path_buf());
        // A template from before tags: an implicit default.
        s.save(&tpl("app", "d0")).expect("save");
        let tags = s.tags("app").expect("tags");
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0].tag, "default");
        assert_eq!(s.get("app:default").expect("default").digest, "d0");
        // A build tagged v1 only: the name still means the default build.
        s.record_build(&tpl("app", "d1"), "11111111-1111-4111-8111-111111111111", &["v1".into()], 5).expect("v1");
        assert_eq!(s.get("app").expect("app").digest, "d0");
        assert_eq!(s.get("app:v1").expect("v1").digest, "d1");
        assert_eq!(s.get("app:v1").expect("v1").name, "app");
        // A default build moves the name.
        s.record_build(&tpl("app", "d2"), "22222222-2222-4222-8222-222222222222", &[], 6).expect("default");
        assert_eq!(s.get("app").expect("app").digest, "d2");
        assert_eq!(s.get("app:v1").expect("v1").digest, "d1", "v1 keeps its build");
        // Tags follow a build; production from v1, then default to v1.
        let b = s.assign_tags("app:v1", &["production".into()], 7).expect("assign");
        assert_eq!(b, "11111111-1111-4111-8111-111111111111");
        assert_eq!(s.get("app:production").expect("prod").digest, "d1");
        s.assign_tags("app:v1", &["default".into()], 8).expect("default to v1");
        assert_eq!(s.get("app").expect("app").digest, "d1");
        // The first default build (d0) is no longer named by any tag: pruned.
        let names: Vec<String> = s.tags("app").expect("tags").into_iter().map(|t| format!("{}={}", t.tag, &t.build_id[..8])).collect();
        assert_eq!(names, vec!["default=11111111", "production=11111111", "v1=11111111"]);
        s.remove_tags("app", &["production".into()]).expect("remove");
        assert!(s.get("app:production").is_err());
        assert!(matches!(s.remove_tags("app", &["default".into()]), Err(TemplateError::Invalid(_))));
        assert!(matches!(s.remove_tags("app", &["nope".into()]), Err(TemplateError::NotFound(_))));
        assert!(matches!(s.assign_tags("app:nope", &["x".into()], 9), Err(TemplateError::NotFound(_))));
        assert!(matches!(s.assign_tags("app:v1", &["bad tag".into()], 9), Err(TemplateError::Invalid(_))));
        assert!(s.get("nosuch:v1").is_err());
        // Tagged builds' layers are in use; d2's, named by nothing, are not.
        let used = s.layers_referenced();
        assert!(used.contains(&PathBuf::from("/layers/d1")));
        assert!(!used.contains(&PathBuf::from("/layers/d2")));
    }

    #[test]
    fn tag_syntax() {
        assert!(valid_tag("v1.0") && valid_tag("production") && valid_tag("a_b-c"));
        assert!(!valid_tag("") && !valid_tag(".x") && !valid_tag("-x") && !valid_tag("a:b") && !valid_tag("a b") && !valid_tag(&"x".repeat(129)));
        assert_eq!(split_ref("app:v1"), ("app", Some("v1")));
        assert_eq!(split_ref("app"), ("app", None));
        let id = implicit_build_id(&tpl("a", "b"));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
