//! Templates as the API sees them: list, show, build, alias, delete.

use super::*;

impl Service {
    /// The templates and snapshots here and, in a cluster, those only other
    /// nodes have (from the cluster's manifests: any node makes a sandbox
    /// of them). Without etcd, this node's own.
    pub(crate) async fn known_templates(&self) -> Result<Vec<airlock_template::Template>, ApiError> {
        let store = self.builder.store.clone();
        let mut list = self.blocking(move || store.list()).await?.map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(c) = self.cluster() {
            match c.manifests().await {
                Ok(remote) => {
                    let here: std::collections::HashSet<String> = list.iter().map(|t| t.name.clone()).collect();
                    list.extend(remote.into_iter().map(|m| m.template).filter(|t| !here.contains(&t.name)));
                    list.sort_by(|a, b| a.name.cmp(&b.name));
                }
                Err(e) => tracing::warn!(error = %e, "listing the cluster's templates failed: listing this node's"),
            }
        }
        Ok(list)
    }

    pub async fn templates(&self) -> Result<Vec<TemplateInfo>, ApiError> {
        let list = self.known_templates().await?;
        // Snapshots are listed by `GET /snapshots`.
        Ok(list.iter().filter(|t| t.snapshot.is_none()).map(template_info).collect())
    }

    /// Names and aliases of the templates here, snapshots included (a
    /// sandbox made from one must be placed where it is), at most `max`.
    pub async fn template_names(&self, max: usize) -> Vec<String> {
        let store = self.builder.store.clone();
        match self.blocking(move || store.list()).await {
            Ok(Ok(list)) => list.iter().flat_map(|t| std::iter::once(t.name.clone()).chain(t.aliases.iter().cloned())).take(max).collect(),
            _ => Vec::new(),
        }
    }

    pub async fn template(&self, name: &str) -> Result<TemplateInfo, ApiError> {
        let name = super::create::template_name(name);
        let store = self.builder.store.clone();
        let n = name.to_string();
        match self.blocking(move || store.get(&n)).await? {
            Ok(t) => Ok(template_info(&t)),
            Err(_) => match self.cluster() {
                // Another node's: this one copies it when a sandbox needs it.
                Some(c) => match c.manifest(name).await.map_err(|e| crate::cluster::unavailable(&format!("looking for template '{name}' in the cluster"), &e))? {
                    Some((m, _)) => Ok(template_info(&m.template)),
                    None => Err(ApiError::NotFound(format!("template '{name}' not found"))),
                },
                None => Err(ApiError::NotFound(format!("template '{name}' not found"))),
            },
        }
    }

    pub async fn build_template(
        &self,
        name: &str,
        recipe: &str,
        args: &BTreeMap<String, String>,
        context: Option<&std::path::Path>,
        events: &mpsc::Sender<crate::builder::BuildEvent>,
    ) -> Result<(), ApiError> {
        if recipe.trim().is_empty() {
            return Err(ApiError::BadRequest("recipe is required".into()));
        }
        // A shipped recipe named by FROM is built first, on first use, as
        // a create would (E2B's builds do the same).
        if let Ok(instrs) = airlock_template::recipe::parse(recipe, args) {
            for i in &instrs {
                if let airlock_template::recipe::Instr::From(parent) = i {
                    if airlock_template::recipe::builtin(parent).is_some() {
                        self.ensure_template(parent).await?;
                    }
                }
            }
        }
        let lock = self.build_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone();
        let _g = lock.lock().await;
        self.builder.build(name, recipe, args, context, events).await.map(|_| ()).map_err(|e| match e {
            crate::builder::BuildError::Internal(m) => ApiError::Internal(m),
            crate::builder::BuildError::NotFound(t) => ApiError::NotFound(format!("template '{t}' not found")),
            other => ApiError::BadRequest(other.to_string()),
        })
    }

    pub async fn alias_template(&self, name: &str, alias: &str) -> Result<(), ApiError> {
        if !airlock_template::Store::valid_name(alias) {
            return Err(ApiError::BadRequest(format!("invalid alias {alias:?}")));
        }
        let store = self.builder.store.clone();
        let (n, a) = (name.to_string(), alias.to_string());
        self.blocking(move || -> Result<(), ApiError> {
            if store.get(&a).is_ok() {
                return Err(ApiError::Conflict(format!("a template named '{a}' already exists")));
            }
            let mut t = store.get(&n).map_err(|_| ApiError::NotFound(format!("template '{n}' not found")))?;
            t.aliases.push(a);
            store.save(&t).map_err(|e| ApiError::Internal(e.to_string()))
        })
        .await?
    }

    /// Deletes a template; refused while sandboxes use it unless forced
    /// (their mounted layers keep working; unused layers are collected).
    pub async fn delete_template(&self, name: &str, force: bool) -> Result<(), ApiError> {
        let here = {
            let store = self.builder.store.clone();
            let n = super::create::template_name(name).to_string();
            self.blocking(move || store.get(&n).is_ok()).await?
        };
        if let Some(c) = self.cluster() {
            // Deleted everywhere: the other nodes drop their copies at their
            // next catalog repair.
            let n = super::create::template_name(name);
            let forgot = c.forget_template(n).await.map_err(|e| crate::cluster::unavailable(&format!("deleting template '{n}' from the cluster"), &e))?;
            if !here {
                return if forgot { Ok(()) } else { Err(ApiError::NotFound(format!("template '{name}' not found"))) };
            }
        }
        let t = self.template(name).await?;
        let store = self.store.clone();
        let users: Vec<String> = self
            .blocking(move || store.sandboxes())
            .await??
            .into_iter()
            .filter(|r| {
                // `name:tag` is a build of the template too.
                let (n, _) = airlock_template::tags::split_ref(&r.template);
                n == t.name || t.aliases.iter().any(|a| a == n)
            })
            .map(|r| r.id)
            .collect();
        if !users.is_empty() && !force {
            return Err(ApiError::Conflict(format!("template '{name}' is used by {} sandbox(es): {}; kill them or delete with force=true", users.len(), users.join(", "))));
        }
        // Snapshots stacked on it: its layers stay theirs either way, but
        // deleting the template they came from is refused unless forced.
        let tstore = self.builder.store.clone();
        let tn = t.name.clone();
        let top = self.find_template(&tn).await?.and_then(|t| t.root_layers.first().cloned());
        let dependents: Vec<String> = self
            .blocking(move || tstore.list())
            .await?
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .into_iter()
            .filter(|s| s.name != tn && s.snapshot.is_some() && top.as_ref().is_some_and(|l| s.root_layers.contains(l)))
            .map(|s| format!("{}:default", s.name))
            .collect();
        if !dependents.is_empty() && !force {
            return Err(ApiError::Conflict(format!(
                "template '{name}' is the base of {} snapshot(s): {}; delete them first or delete with force=true",
                dependents.len(),
                dependents.join(", ")
            )));
        }
        let tstore = self.builder.store.clone();
        let n = t.name.clone();
        self.blocking(move || -> Result<(), ApiError> {
            tstore.remove(&n).map_err(|e| match e {
                airlock_template::TemplateError::NotFound(_) => ApiError::NotFound(format!("template '{n}' not found")),
                other => ApiError::BadRequest(other.to_string()),
            })?;
            Ok(())
        })
        .await??;
        // Layers sandboxes or other snapshots still run on stay.
        self.collect_layers(false).await.map(|_| ())
    }
}

impl Service {
    /// E2B's `GET /default-templates`: `base` and the shipped recipes, in
    /// E2B's `Template` shape; one not built yet (it is built on first use)
    /// is `waiting`.
    pub async fn default_templates(&self) -> Result<Vec<serde_json::Value>, ApiError> {
        let mut out = Vec::new();
        for name in std::iter::once("base").chain(airlock_template::recipe::BUILTIN) {
            let t = self.find_template(name).await?;
            let mut v = self.e2b_template(name, t.as_ref(), None);
            v["public"] = serde_json::json!(true);
            v["isDefault"] = serde_json::json!(true);
            v["description"] =
                serde_json::json!(if name == "base" { "the host's userland, read-only, with a private writable layer" } else { "a shipped recipe, built on first use" });
            out.push(v);
        }
        Ok(out)
    }

    /// A template in E2B's `Template` shape; `None` (a shipped recipe not
    /// built yet) is `waiting`. The build id is its default tag's.
    fn e2b_template(&self, name: &str, t: Option<&airlock_template::Template>, build: Option<String>) -> serde_json::Value {
        let at = t.map(|t| rfc3339_ms(t.created_at)).unwrap_or_else(|| rfc3339_ms(0));
        serde_json::json!({
            "templateID": name,
            "buildID": build.unwrap_or_else(|| t.map(|t| t.digest.clone()).unwrap_or_default()),
            "cpuCount": self.cfg.default_cpus.ceil().max(1.0) as u32,
            "memoryMB": self.cfg.default_memory_mb,
            "diskSizeMB": self.cfg.default_disk_mb,
            "public": t.is_some_and(|t| t.public),
            "aliases": t.map(|t| t.aliases.clone()).unwrap_or_default(),
            "names": [name],
            "createdAt": at,
            "updatedAt": at,
            "createdBy": null,
            "lastSpawnedAt": null,
            "spawnCount": 0,
            "buildCount": u32::from(t.is_some()),
            "envdVersion": ENVD_VERSION,
            "buildStatus": if t.is_some() { "ready" } else { "waiting" },
            "isDefault": false,
        })
    }

    /// `GET /v2/templates`: every template (snapshots are `GET /snapshots`)
    /// by name, `limit` at a time after `after`; the next page's token.
    pub async fn e2b_templates(&self, limit: usize, after: Option<&str>) -> Result<(Vec<serde_json::Value>, Option<String>), ApiError> {
        let store = self.builder.store.clone();
        let after = after.map(str::to_string);
        // One pass off the async workers: the page and its default builds.
        let (page, next) = self
            .blocking(move || -> Result<_, airlock_template::TemplateError> {
                let mut list: Vec<_> = store.list()?.into_iter().filter(|t| t.snapshot.is_none() && after.as_deref().is_none_or(|a| t.name.as_str() > a)).collect();
                let next = (list.len() > limit).then(|| list[limit - 1].name.clone());
                list.truncate(limit);
                let page: Vec<_> = list
                    .into_iter()
                    .map(|t| {
                        let build = store.tags(&t.name).ok().and_then(|tags| tags.into_iter().find(|x| x.tag == airlock_template::tags::DEFAULT_TAG)).map(|x| x.build_id);
                        (t, build)
                    })
                    .collect();
                Ok((page, next))
            })
            .await?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let out = page.into_iter().map(|(t, build)| self.e2b_template(&t.name, Some(&t), build)).collect();
        Ok((out, next))
    }

    /// A template's tags in E2B's `TemplateTag` shape.
    pub async fn template_tags(&self, name: &str) -> Result<Vec<serde_json::Value>, ApiError> {
        let store = self.builder.store.clone();
        let n = name.to_string();
        let tags = self.blocking(move || store.tags(&n)).await?.map_err(tag_error)?;
        Ok(tags.into_iter().map(|t| serde_json::json!({"tag": t.tag, "buildID": t.build_id, "createdAt": rfc3339_ms(t.created_at)})).collect())
    }

    pub async fn assign_template_tags(&self, target: &str, tags: Vec<String>) -> Result<serde_json::Value, ApiError> {
        let store = self.builder.store.clone();
        let (t, tg) = (target.trim().to_string(), tags.clone());
        let build = self.blocking(move || store.assign_tags(&t, &tg, now_ms())).await?.map_err(tag_error)?;
        Ok(serde_json::json!({"tags": tags, "buildID": build}))
    }

    pub async fn remove_template_tags(&self, name: &str, tags: Vec<String>) -> Result<(), ApiError> {
        if tags.is_empty() {
            return Err(ApiError::BadRequest("no tags to remove".into()));
        }
        let store = self.builder.store.clone();
        let n = name.trim().to_string();
        self.blocking(move || store.remove_tags(&n, &tags)).await?.map_err(tag_error)?;
        self.collect_layers(false).await.map(|_| ())
    }

    /// E2B's template update (`public`); returns the template's names.
    pub async fn update_template(&self, name: &str, public: Option<bool>) -> Result<Vec<String>, ApiError> {
        let store = self.builder.store.clone();
        let n = super::create::template_name(name).to_string();
        self.blocking(move || -> Result<Vec<String>, ApiError> {
            let mut t = store.get(&n).ok().filter(|t| t.snapshot.is_none()).ok_or_else(|| ApiError::NotFound(format!("template '{n}' not found")))?;
            if t.name == "base" && public.is_some() {
                return Err(ApiError::BadRequest("the base template cannot be changed".into()));
            }
            if let Some(p) = public {
                t.public = p;
                store.save(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
            }
            Ok(std::iter::once(t.name.clone()).chain(t.aliases.iter().cloned()).collect())
        })
        .await?
    }
}

fn tag_error(e: airlock_template::TemplateError) -> ApiError {
    match e {
        airlock_template::TemplateError::NotFound(t) => ApiError::NotFound(format!("template '{t}' not found")),
        airlock_template::TemplateError::Invalid(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(other.to_string()),
    }
}
