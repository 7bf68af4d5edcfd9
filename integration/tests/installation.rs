//! One installation per vhost: a dispatcher whose database is another installation's than
//! the one that claimed the vhost refuses to start, saying why, instead of consuming that
//! installation's events.

use std::time::Duration;

use anyhow::Context;
use opflow_integration::{Env, binary, stderr};

#[tokio::test]
async fn a_second_installation_on_one_vhost_is_refused_at_start() -> anyhow::Result<()> {
    let first = Env::new("installation_a").await?;
    first.register("noop").await?;
    let (mut dispatcher, _) = first.spawn_dispatcher_api(&[]).await?;
    // A run goes through, so the first installation leads and has claimed the vhost.
    let plan = first.plan_file("p", "name: p\nassets:\n  - name: a\n    op: noop@1.1.0\n")?;
    let _worker = first.spawn_worker("noop")?;
    first.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--wait"]).await?;

    // Another database, the same vhost.
    let mut second = Env::new("installation_b").await?;
    second.amqp_url = first.amqp_url.clone();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        second.command(&binary("opflow")?).arg("dispatcher").output(),
    )
    .await
    .context("the second dispatcher should stop by itself")??;
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{message}");
    assert!(message.contains("this RabbitMQ vhost is used by another opflow installation"), "{message}");
    assert!(message.contains("a vhost of its own"), "{message}");
    // The first one is unharmed.
    dispatcher.check_alive()?;
    first.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--wait"]).await?;
    Ok(())
}
