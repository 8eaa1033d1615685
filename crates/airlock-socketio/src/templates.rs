//! `template:create`: a template from SandboxSDK's spec (`name`,
//! `language`, `version`, `dockerImage`, `dependencies`, `installCommand`,
//! `defaultEnvVars`), sent to the server's build API as it is (the server
//! writes the recipe), with the build's events streamed to the socket.

use std::sync::Arc;

use airlock_proto::api::TemplateSpec;
use airlock_sdk::BuildEvent;
use futures_util::StreamExt;
use serde_json::{json, Value};
use socketioxide::extract::SocketRef;

use crate::error::GwError;
use crate::{emit, Session};

/// Log lines of a failed build kept for its error.
const FAILED_LOG_LINES: usize = 40;

pub(crate) async fn create_template(sess: Arc<Session>, s: SocketRef, v: Value) -> Result<Value, GwError> {
    let spec: TemplateSpec = crate::ops::args("template:create", v)?;
    crate::ops::check_id("name", &spec.name)?;
    // The server writes the recipe and refuses a bad spec with a 400.
    let req = airlock_sdk::BuildTemplate { name: spec.name.clone(), spec: Some(spec.clone()), ..Default::default() };
    let mut stream = sess.client.templates().build(&req).await?;
    let mut log: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        if let BuildEvent::Log { text, .. } = &ev {
            if log.len() == FAILED_LOG_LINES {
                log.pop_front();
            }
            log.push_back(text.clone());
        }
        let _ = emit(&s, "template:build", &json!({ "name": spec.name, "event": ev })).await;
        match ev {
            BuildEvent::Done { .. } => {
                let t = sess.client.templates().get(&spec.name).await?;
                return Ok(json!({ "template": crate::ops::template_view(&t) }));
            }
            BuildEvent::Error { message } => {
                let tail: Vec<String> = log.into_iter().collect();
                return Err(GwError::new("BUILD_FAILED", format!("{message}\n{}", tail.join(""))));
            }
            _ => {}
        }
    }
    Err(GwError::new("UNAVAILABLE", "the build's stream ended before the build did"))
}
