//! The API's views of sandboxes: one (`SandboxDetail`), the create and
//! connect body, and listing with filters and paging.

use super::*;

impl Service {
    /// E2B's `clientID`: the node that holds the sandbox (its name in a
    /// cluster).
    fn client_id(&self) -> String {
        self.cluster().map_or_else(|| "airlock".to_string(), |c| c.name().to_string())
    }

    pub fn detail(&self, row: &SandboxRow) -> SandboxDetail {
        SandboxDetail {
            template_id: row.template.clone(),
            sandbox_id: row.id.clone(),
            client_id: self.client_id(),
            alias: Some(row.template.clone()),
            started_at: rfc3339_ms(row.started_at),
            end_at: rfc3339_ms(row.end_at),
            envd_version: ENVD_VERSION.into(),
            cpu_count: row.cpus.ceil().max(1.0) as u32,
            memory_mb: row.memory_mb,
            disk_size_mb: row.disk_mb,
            state: row.state.api_str().into(),
            metadata: row.metadata.clone(),
            envd_access_token: row.access_token.clone(),
            allow_internet_access: Some(row.internet),
            death: (row.state == State::Dead).then(|| row.death.clone()),
            alerts: (!row.alerts.is_empty()).then_some(row.alerts),
            lifecycle: api::Lifecycle { auto_resume: row.auto_resume, on_timeout: if row.auto_pause { "pause".into() } else { "kill".into() } },
            domain: self.cfg.domain.clone(),
            network: None,
        }
    }

    pub fn sandbox_body(&self, row: &SandboxRow) -> api::Sandbox {
        api::Sandbox {
            template_id: row.template.clone(),
            sandbox_id: row.id.clone(),
            client_id: self.client_id(),
            envd_version: ENVD_VERSION.into(),
            alias: Some(row.template.clone()),
            envd_access_token: row.access_token.clone(),
            traffic_access_token: row.access_token.as_deref().map(airlock_proto::envd::traffic_token),
            domain: self.cfg.domain.clone(),
        }
    }

    pub async fn get(&self, id: &str) -> Result<SandboxDetail, ApiError> {
        if let Some(dead) = self.dead_row(id).await? {
            return Err(Self::death_error(&dead));
        }
        let row = self.row(id).await?;
        let mut d = self.detail(&row);
        let spec = self.egress_spec(id).await?.unwrap_or_default();
        let mut net = serde_json::json!({"allow_public_traffic": row.public_traffic, "allow_out": spec.allow_out, "deny_out": spec.deny_out});
        if !row.mask_host.is_empty() {
            net["mask_request_host"] = row.mask_host.clone().into();
        }
        if let Some(r) = spec.rules {
            net["rules"] = r;
        }
        d.network = Some(net);
        Ok(d)
    }

    pub async fn list(&self, f: ListFilter) -> Result<Page, ApiError> {
        let store = self.store.clone();
        let mut rows = self.blocking(move || store.sandboxes()).await??;
        // The dead only when asked for (`state=dead`): the E2B SDKs know
        // no such state.
        let want_dead = f.states.as_ref().is_some_and(|s| s.contains(&State::Dead));
        rows.retain(|r| r.state.visible() || want_dead && r.state == State::Dead);
        let running = rows.iter().filter(|r| r.state.api_str() == "running").count();
        // A template filter names a template by name or alias.
        let template_alias = match &f.template {
            Some(t) => self.find_template(super::create::template_name(t)).await?.map(|t| t.name),
            None => None,
        };
        let after: Option<i64> = match &f.next_token {
            Some(t) if !t.is_empty() => Some(t.parse().map_err(|_| ApiError::BadRequest(format!("invalid nextToken {t:?}")))?),
            _ => None,
        };
        let mut matching: Vec<&SandboxRow> = rows
            .iter()
            // Filters name the states the API shows.
            .filter(|r| f.states.as_ref().is_none_or(|s| s.iter().any(|x| x.api_str() == r.state.api_str())))
            .filter(|r| f.metadata.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
            .filter(|r| f.template.as_ref().is_none_or(|t| &r.template == t || template_alias.as_ref() == Some(&r.template)))
            .filter(|r| f.started_after.is_none_or(|t| r.started_at >= t) && f.started_before.is_none_or(|t| r.started_at < t))
            .collect();
        if f.descending {
            matching.reverse();
        }
        if let Some(after) = after {
            matching.retain(|r| if f.descending { r.seq < after } else { r.seq > after });
        }
        let limit = if f.limit == 0 { usize::MAX } else { f.limit };
        let more = matching.len() > limit;
        matching.truncate(limit);
        let next_token = if more { matching.last().map(|r| r.seq.to_string()) } else { None };
        Ok(Page { items: matching.into_iter().map(|r| self.detail(r)).collect(), next_token, running })
    }
}

impl Service {
    /// Moru's sandbox runs: every run the event store remembers (the newest
    /// 100,000 events), newest first, live ones with their state and ended
    /// ones with how and when they ended. `statuses` filters (running,
    /// paused, stopped, error); the page token is a `created` event's id.
    pub async fn sandbox_runs(&self, statuses: Vec<String>, limit: usize, next_token: Option<String>) -> Result<(Vec<api::SandboxRun>, Option<String>), ApiError> {
        for s in &statuses {
            if !["running", "paused", "stopped", "error"].contains(&s.as_str()) {
                return Err(ApiError::BadRequest(format!("invalid status {s:?}: use running, paused, stopped or error")));
            }
        }
        let mut before = match next_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => t.parse::<i64>().map_err(|_| ApiError::BadRequest(format!("invalid nextToken {t:?}")))?,
            None => i64::MAX,
        };
        let store = self.store.clone();
        self.blocking(move || -> Result<_, StoreError> {
            let mut out = Vec::new();
            loop {
                let batch = store.creations_before(before, 200)?;
                let exhausted = batch.len() < 200;
                for created in batch {
                    before = created.id;
                    let row = store.sandbox(&created.sandbox_id)?;
                    let run = match row.filter(|r| r.state.visible() || r.state == State::Dead) {
                        Some(r) if r.state == State::Dead => ended(&created, "error", "error", Some(rfc3339_ms(r.died_at))),
                        Some(r) => api::SandboxRun {
                            created_at: created.timestamp.clone(),
                            sandbox_id: created.sandbox_id.clone(),
                            status: r.state.api_str().to_string(),
                            template_id: created.template_id.clone(),
                            alias: Some(r.template.clone()),
                            end_reason: None,
                            ended_at: None,
                        },
                        None => match store.run_end(&created.sandbox_id)? {
                            Some(end) => {
                                let (status, reason) = match end.kind.as_str() {
                                    "timeout" => ("stopped", "timeout"),
                                    "died" | "error" => ("error", "error"),
                                    "killed" => ("stopped", "killed"),
                                    _ => ("stopped", "shutdown"),
                                };
                                ended(&created, status, reason, Some(end.timestamp))
                            }
                            // Gone without a word (its end was trimmed away).
                            None => ended(&created, "stopped", "shutdown", None),
                        },
                    };
                    if statuses.is_empty() || statuses.contains(&run.status) {
                        out.push(run);
                        if out.len() == limit {
                            return Ok((out, Some(before.to_string())));
                        }
                    }
                }
                if exhausted {
                    return Ok((out, None));
                }
            }
        })
        .await?
        .map_err(Into::into)
    }
}

fn ended(created: &crate::events::Event, status: &str, reason: &str, at: Option<String>) -> api::SandboxRun {
    api::SandboxRun {
        created_at: created.timestamp.clone(),
        sandbox_id: created.sandbox_id.clone(),
        status: status.to_string(),
        template_id: created.template_id.clone(),
        alias: Some(created.template_id.clone()).filter(|t| !t.is_empty()),
        end_reason: Some(reason.to_string()),
        ended_at: at,
    }
}
