//! Templates as the API sees them: list, show, build, alias, delete.

use super::*;

impl Service {
    pub async fn templates(&self) -> Result<Vec<TemplateInfo>, ApiError> {
        let store = self.builder.store.clone();
        let list = self.blocking(move || store.list()).await?.map_err(|e| ApiError::Internal(e.to_string()))?;
        // Snapshots are listed by `GET /snapshots`.
        Ok(list.iter().filter(|t| t.snapshot.is_none()).map(template_info).collect())
    }

    pub async fn template(&self, name: &str) -> Result<TemplateInfo, ApiError> {
        let name = super::create::template_name(name);
        let store = self.builder.store.clone();
        let n = name.to_string();
        let t = self.blocking(move || store.get(&n)).await?.map_err(|_| ApiError::NotFound(format!("template '{name}' not found")))?;
        Ok(template_info(&t))
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
        let t = self.template(name).await?;
        let store = self.store.clone();
        let users: Vec<String> =
            self.blocking(move || store.sandboxes()).await??.into_iter().filter(|r| r.template == t.name || t.aliases.contains(&r.template)).map(|r| r.id).collect();
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
            let at = t.as_ref().map(|t| rfc3339_ms(t.created_at)).unwrap_or_else(|| rfc3339_ms(0));
            out.push(serde_json::json!({
                "templateID": name,
                "buildID": t.as_ref().map(|t| t.digest.clone()).unwrap_or_default(),
                "cpuCount": self.cfg.default_cpus.ceil().max(1.0) as u32,
                "memoryMB": self.cfg.default_memory_mb,
                "diskSizeMB": self.cfg.default_disk_mb,
                "public": true,
                "aliases": t.as_ref().map(|t| t.aliases.clone()).unwrap_or_default(),
                "names": [name],
                "createdAt": at,
                "updatedAt": at,
                "createdBy": null,
                "lastSpawnedAt": null,
                "spawnCount": 0,
                "buildCount": u32::from(t.is_some()),
                "envdVersion": ENVD_VERSION,
                "buildStatus": if t.is_some() { "ready" } else { "waiting" },
                "isDefault": true,
                "description": if name == "base" { "the host's userland, read-only, with a private writable layer" } else { "a shipped recipe, built on first use" },
            }));
        }
        Ok(out)
    }
}
