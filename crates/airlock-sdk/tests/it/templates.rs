//! Templates through the SDK: build with streamed progress, list, show,
//! alias, create from the alias, and the delete guard.

use airlock_sdk::{BuildEvent, BuildTemplate, Error, Sandbox};
use futures_util::StreamExt;

use crate::support::Server;

async fn build(client: &airlock_sdk::Client, name: &str, recipe: &str) -> Vec<BuildEvent> {
    let mut s = client.templates().build(&BuildTemplate { name: name.into(), recipe: recipe.into(), ..Default::default() }).await.expect("build starts");
    let mut events = Vec::new();
    while let Some(ev) = s.next().await {
        events.push(ev.expect("event"));
    }
    events
}

#[tokio::test]
async fn build_list_alias_use_and_delete_a_template() {
    let srv = Server::start();
    let client = srv.client();
    let events = build(&client, "sdk-tpl", "FROM base\nRUN echo built-by-sdk > /opt-marker && echo step-output\n").await;
    assert!(matches!(events.first(), Some(BuildEvent::Step { step: 1, total: 2, .. })), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, BuildEvent::Log { text, .. } if text.contains("step-output"))), "the step's output streams: {events:?}");
    assert!(matches!(events.last(), Some(BuildEvent::Done { name, .. }) if name == "sdk-tpl"), "{events:?}");
    // A second build is all cache.
    let again = build(&client, "sdk-tpl", "FROM base\nRUN echo built-by-sdk > /opt-marker && echo step-output\n").await;
    assert!(again.iter().any(|e| matches!(e, BuildEvent::Step { step: 2, cached: true, .. })), "{again:?}");

    let t = client.templates();
    assert!(t.list().await.expect("list").iter().any(|i| i.name == "sdk-tpl" && i.layers >= 2));
    t.alias("sdk-tpl", "sdk-alias").await.expect("alias");
    let info = t.get("sdk-alias").await.expect("get by alias");
    assert_eq!(info.name, "sdk-tpl");
    assert!(info.aliases.contains(&"sdk-alias".to_string()));

    let sbx = Sandbox::builder().client(&client).template("sdk-alias").create().await.expect("create from the alias");
    assert_eq!(sbx.commands().run("cat /opt-marker").await.expect("run").stdout, "built-by-sdk\n");
    assert!(t.delete("sdk-tpl", false).await.is_err(), "refused while a sandbox uses it");
    sbx.kill().await.expect("kill");
    t.delete("sdk-tpl", false).await.expect("delete");
    assert!(matches!(t.get("sdk-tpl").await, Err(Error::NotFound(_))));

    // Errors are errors, before any event.
    assert!(client.templates().build(&BuildTemplate { name: "bad name!".into(), recipe: "FROM base\n".into(), ..Default::default() }).await.is_err());
    let failed = build(&client, "sdk-fails", "FROM base\nRUN exit 3\n").await;
    assert!(matches!(failed.last(), Some(BuildEvent::Error { message }) if message.contains("exit code 3")), "{failed:?}");
}
