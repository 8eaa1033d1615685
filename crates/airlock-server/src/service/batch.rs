//! Batch execution (`POST /sandboxes/{id}/batch`): a list of code jobs run
//! one after another in one sandbox's code interpreter, highest priority
//! first, each under its own timeout.
//!
//! Jobs of one language share a context made for the batch, so a later
//! job sees what an earlier one defined, and the sandbox's own default
//! contexts are left alone; the batch's contexts are removed when it ends,
//! also when its client goes away mid-batch. Everything that can be
//! refused (ids, sizes, timeouts, languages, the sandbox's state) is
//! refused before the first job runs.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::agent_client::{self, AgentError};
use airlock_proto::api::{BatchJob, BatchJobResult, BatchRequest, BatchResults};

/// Jobs in one batch.
pub(super) const MAX_JOBS: usize = 1000;
/// Bytes of code in one job, and in a whole batch (the request body limit).
pub(super) const MAX_JOB_CODE: usize = 1024 * 1024;
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
const MAX_ID_LEN: usize = 128;
const DEFAULT_TIMEOUT_MS: u64 = 60_000;
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Output kept per job and stream; a job that writes more is cut, with a note.
const MAX_OUTPUT: usize = 1024 * 1024;
/// Results (display data, last values) kept per job.
const MAX_RESULTS: usize = 100;
/// How long removing or restarting a context may take before it is left
/// to the agent (a kernel that ignores SIGINT is killed after 3 s there).
const CONTEXT_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A checked batch, ready to run: jobs in running order and a context
/// per language.
pub struct BatchPlan {
    sandbox: String,
    socket: PathBuf,
    token: Option<String>,
    jobs: Vec<BatchJob>,
    contexts: Contexts,
}

/// The batch's contexts, removed when dropped (in the background: a
/// client that went away mid-batch drops the plan inside its request).
struct Contexts {
    socket: PathBuf,
    token: Option<String>,
    by_language: BTreeMap<String, String>,
}

impl Drop for Contexts {
    fn drop(&mut self) {
        let ids: Vec<String> = std::mem::take(&mut self.by_language).into_values().collect();
        if ids.is_empty() {
            return;
        }
        let (socket, token) = (self.socket.clone(), self.token.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            for id in ids {
                if let Err(e) = tokio::time::timeout(CONTEXT_OP_TIMEOUT, agent_client::delete_context(&socket, token.as_deref(), &id))
                    .await
                    .unwrap_or(Err(AgentError::Http("timed out".into())))
                {
                    // The sandbox may be gone already; nothing else holds the context.
                    tracing::debug!(context = %id, error = %e, "removing a batch context");
                }
            }
        });
    }
}

/// The language name the interpreter is asked for, so `JS` and `js` share
/// a context; the interpreter itself decides what it supports.
fn language_key(l: Option<&str>) -> String {
    l.map(str::trim).filter(|l| !l.is_empty()).unwrap_or("python").to_ascii_lowercase()
}

/// Refuses a batch that cannot run as asked, naming the job.
fn check(req: &BatchRequest) -> Result<(), ApiError> {
    if req.jobs.is_empty() {
        return Err(ApiError::BadRequest("a batch needs at least one job".into()));
    }
    if req.jobs.len() > MAX_JOBS {
        return Err(ApiError::BadRequest(format!("a batch has at most {MAX_JOBS} jobs, this one has {}", req.jobs.len())));
    }
    let mut seen = HashSet::new();
    for j in &req.jobs {
        if j.id.trim().is_empty() || j.id.len() > MAX_ID_LEN || j.id.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(format!("invalid job id {:?}: 1 to {MAX_ID_LEN} bytes of printable text", j.id.chars().take(40).collect::<String>())));
        }
        if !seen.insert(j.id.as_str()) {
            return Err(ApiError::BadRequest(format!("duplicate job id {:?}: ids must be unique within a batch", j.id)));
        }
        if j.code.len() > MAX_JOB_CODE {
            return Err(ApiError::BadRequest(format!("job {:?}: its code is {} bytes, at most {MAX_JOB_CODE}", j.id, j.code.len())));
        }
        if let Some(t) = j.timeout {
            if t == 0 || t > MAX_TIMEOUT_MS {
                return Err(ApiError::BadRequest(format!("job {:?}: timeout must be 1 to {MAX_TIMEOUT_MS} ms, got {t}", j.id)));
            }
        }
        super::create::check_env(&j.envs).map_err(|e| ApiError::BadRequest(format!("job {:?}: {e}", j.id)))?;
        if let Some((k, _)) = j.envs.iter().find(|(_, v)| v.contains('\0')) {
            return Err(ApiError::BadRequest(format!("job {:?}: environment variable {k:?} has a NUL byte in its value", j.id)));
        }
    }
    Ok(())
}

/// Running order: highest priority first, ties in the order given.
fn order(mut jobs: Vec<BatchJob>) -> Vec<BatchJob> {
    // A stable sort keeps submission order within a priority.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.priority));
    jobs
}

/// Appends at most `MAX_OUTPUT` bytes in all, marking a cut once.
fn keep(buf: &mut String, cut: &mut bool, text: &str) {
    if *cut {
        return;
    }
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    if text.len() <= room {
        buf.push_str(text);
    } else {
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        buf.push_str(&text[..end]);
        buf.push_str(&format!("\n[output cut at {MAX_OUTPUT} bytes]\n"));
        *cut = true;
    }
}

impl Service {
    /// Checks a batch and makes its contexts; nothing runs yet.
    pub async fn batch_plan(&self, id: &str, req: BatchRequest) -> Result<BatchPlan, ApiError> {
        check(&req)?;
        let row = self.row(id).await?;
        if row.state != State::Running {
            return Err(ApiError::Conflict(format!("sandbox {id} is not running ({}): resume it first", row.state.as_str())));
        }
        let backend = self.backend.clone();
        let id2 = id.to_string();
        let info = self.blocking(move || backend.get(&id2)).await?.map_err(|e| runtime_err(id, e))?;
        let mut contexts = Contexts { socket: info.socket.clone(), token: row.access_token.clone(), by_language: BTreeMap::new() };
        for j in &req.jobs {
            let lang = language_key(j.language.as_deref());
            if contexts.by_language.contains_key(&lang) {
                continue;
            }
            // The interpreter refuses a language it does not know (400,
            // with the list); that refusal is the batch's, before any job.
            match agent_client::create_context(&contexts.socket, contexts.token.as_deref(), &lang).await {
                Ok(ctx) => {
                    contexts.by_language.insert(lang, ctx);
                }
                Err(AgentError::Rpc(msg)) => {
                    let msg = msg.split_once(": ").map(|(_, m)| m.to_string()).unwrap_or(msg);
                    return Err(ApiError::BadRequest(format!("job {:?}: {msg}", j.id)));
                }
                Err(e) => return Err(ApiError::Internal(format!("sandbox {id}: making a code context: {e}"))),
            }
        }
        Ok(BatchPlan { sandbox: id.to_string(), socket: info.socket, token: row.access_token, jobs: order(req.jobs), contexts })
    }

    /// Whether the sandbox is still one that takes traffic (not being
    /// killed, paused or gone).
    async fn still_running(&self, id: &str) -> bool {
        let store = self.store.clone();
        let id = id.to_string();
        matches!(self.blocking(move || store.sandbox(&id)).await, Ok(Ok(Some(r))) if r.state.takes_traffic())
    }

    /// Runs a planned batch, sending each job's result to `tx` as it ends.
    /// Stops early when `tx`'s receiver is gone (the client left).
    pub async fn run_batch(&self, plan: BatchPlan, tx: Option<mpsc::Sender<BatchJobResult>>) -> BatchResults {
        let started = Instant::now();
        let mut out = BatchResults::default();
        let mut gone: Option<String> = None;
        for job in &plan.jobs {
            let r = match &gone {
                // The sandbox ended: the rest fail at once, each saying why.
                Some(why) => BatchJobResult { job_id: job.id.clone(), error: Some(why.clone()), ..Default::default() },
                None => {
                    let run = self.run_job(&plan, job, &mut gone);
                    match &tx {
                        // A streaming client that left stops the batch now,
                        // interrupting the job that runs.
                        Some(tx) => tokio::select! {
                            r = run => r,
                            _ = tx.closed() => {
                                tracing::info!(sandbox = %plan.sandbox, job = %job.id, "batch client went away; stopping the batch");
                                break;
                            }
                        },
                        None => run.await,
                    }
                }
            };
            if r.success {
                out.succeeded += 1;
            } else {
                out.failed += 1;
            }
            if let Some(tx) = &tx {
                if tx.send(r.clone()).await.is_err() {
                    tracing::info!(sandbox = %plan.sandbox, "batch client went away; stopping the batch");
                    break;
                }
            }
            out.results.push(r);
        }
        out.duration = started.elapsed().as_millis() as u64;
        tracing::info!(sandbox = %plan.sandbox, jobs = plan.jobs.len(), succeeded = out.succeeded, failed = out.failed, duration_ms = out.duration, "batch ran");
        out
    }

    async fn run_job(&self, plan: &BatchPlan, job: &BatchJob, gone: &mut Option<String>) -> BatchJobResult {
        let t0 = Instant::now();
        let mut r = BatchJobResult { job_id: job.id.clone(), ..Default::default() };
        let lang = language_key(job.language.as_deref());
        let Some(ctx) = plan.contexts.by_language.get(&lang) else {
            r.error = Some(format!("no context for {lang}"));
            return r;
        };
        let timeout = Duration::from_millis(job.timeout.unwrap_or(DEFAULT_TIMEOUT_MS));
        let (mut out_cut, mut err_cut) = (false, false);
        let mut failure: Option<String> = None;
        let run = agent_client::execute(&plan.socket, plan.token.as_deref(), ctx, &job.code, &job.envs, |v| match v["type"].as_str() {
            Some("stdout") => keep(&mut r.output, &mut out_cut, v["text"].as_str().unwrap_or("")),
            Some("stderr") => keep(&mut r.stderr, &mut err_cut, v["text"].as_str().unwrap_or("")),
            Some("result") if r.results.len() < MAX_RESULTS => {
                let mut v = v;
                if let Some(o) = v.as_object_mut() {
                    o.remove("type");
                }
                r.results.push(v);
            }
            Some("error") => failure = Some(format!("{}: {}", v["name"].as_str().unwrap_or("Error"), v["value"].as_str().unwrap_or(""))),
            _ => {}
        });
        // Bound first: the closure borrows `r` until the future is gone.
        let ran = tokio::time::timeout(timeout, run).await;
        match ran {
            Ok(Ok(())) => r.error = failure,
            Ok(Err(AgentError::Connect(_))) => {
                let why = format!("sandbox {} is no longer running", plan.sandbox);
                *gone = Some(why.clone());
                r.error = Some(why);
            }
            // Cut off mid-job: a sandbox being killed loses its agent
            // before the socket goes, so ask the store whether it still runs.
            Ok(Err(e)) if !self.still_running(&plan.sandbox).await => {
                let why = format!("sandbox {} is no longer running", plan.sandbox);
                r.error = Some(format!("{why} ({e})"));
                *gone = Some(why);
            }
            Ok(Err(e)) => r.error = Some(e.to_string()),
            Err(_) => {
                r.timed_out = true;
                r.error = Some(format!("timed out after {} ms", timeout.as_millis()));
                // Dropping the stream interrupted the cell; restarting the
                // context makes sure the next job does not wait on a
                // kernel that ignores the interrupt.
                let restart = agent_client::restart_context(&plan.socket, plan.token.as_deref(), ctx);
                if let Ok(Err(e)) = tokio::time::timeout(CONTEXT_OP_TIMEOUT, restart).await {
                    tracing::warn!(sandbox = %plan.sandbox, job = %job.id, error = %e, "restarting a timed-out job's context");
                }
            }
        }
        r.success = r.error.is_none();
        r.duration = t0.elapsed().as_millis() as u64;
        r
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn job(id: &str, priority: i64) -> BatchJob {
        BatchJob { id: id.into(), code: "1".into(), priority, ..Default::default() }
    }

    #[test]
    fn higher_priority_runs_first_and_ties_keep_their_order() {
        let got: Vec<String> = order(vec![job("a", 0), job("b", 5), job("c", 0), job("d", 5), job("e", -1)]).into_iter().map(|j| j.id).collect();
        assert_eq!(got, ["b", "d", "a", "c", "e"]);
    }

    #[test]
    fn bad_batches_are_refused_naming_the_job() {
        let err = |jobs: Vec<BatchJob>| check(&BatchRequest { jobs }).expect_err("refused").to_string();
        assert!(err(vec![]).contains("at least one job"));
        assert!(err(vec![job("a", 0), job("a", 1)]).contains("duplicate job id \"a\""));
        assert!(err(vec![job(" ", 0)]).contains("invalid job id"));
        let mut big = job("big", 0);
        big.code = "x".repeat(MAX_JOB_CODE + 1);
        assert!(err(vec![big]).contains("job \"big\": its code is"));
        let mut t = job("t", 0);
        t.timeout = Some(0);
        assert!(err(vec![t]).contains("timeout must be"));
        let mut e = job("e", 0);
        e.envs.insert("A=B".into(), "1".into());
        assert!(err(vec![e]).contains("job \"e\""));
        assert!(err((0..=MAX_JOBS).map(|i| job(&i.to_string(), 0)).collect()).contains("at most"));
        check(&BatchRequest { jobs: vec![job("a", 0), job("b", 0)] }).expect("fine");
    }

    #[test]
    fn output_is_cut_on_a_character_boundary_once() {
        let (mut b, mut cut) = (String::new(), false);
        keep(&mut b, &mut cut, &"a".repeat(MAX_OUTPUT - 1));
        keep(&mut b, &mut cut, "éé");
        assert!(cut);
        assert!(b.ends_with(&format!("[output cut at {MAX_OUTPUT} bytes]\n")));
        let len = b.len();
        keep(&mut b, &mut cut, "more");
        assert_eq!(b.len(), len);
    }

    #[test]
    fn languages_share_a_context_whatever_their_case() {
        assert_eq!(language_key(None), "python");
        assert_eq!(language_key(Some(" JS ")), "js");
        assert_eq!(language_key(Some("")), "python");
    }
}
