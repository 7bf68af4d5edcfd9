//! Checks: what an op reports of a cell (`check_result`) is kept in the catalog per cell
//! and check; a check the plan declares `blocking: true` that fails fails its step, so only
//! that partition's downstream is skipped, in this run and the next; a failed check sends
//! a `check.failed` webhook.

use std::time::Duration;

use anyhow::Context;
use opflow_integration::{Env, parse_summary, stderr, wait_for};
use serde_json::Value;
use sqlx::PgPool;

const PLAN: &str = "name: checked
assets:
  - name: up
    op: noop@1.1.0
    partitions: [a, b, c]
    config: {check: rows, check_fails_on: [b]}
    checks:
      - {name: rows, blocking: true}
  - name: down
    op: noop@1.1.0
    deps: [up]
    partitions: [a, b, c]
  - name: soft
    op: noop@1.1.0
    partitions: [a, b, c]
    config: {check: style, check_fails_on: [c]}
    checks:
      - {name: style}
";

/// Each step of a run as `asset[partition] status`, with its error.
async fn steps(db: &PgPool, run: &Value) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT a.name || '[' || a.partition_keys[s.id - a.first_step + 1] || ']', s.status::text, s.error
         FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
         WHERE s.run_id = $1::uuid ORDER BY s.id",
    )
    .bind(run["run_id"].as_str().context("run_id")?)
    .fetch_all(db)
    .await?)
}

#[tokio::test]
async fn a_failed_blocking_check_skips_its_partitions_downstream_in_this_run_and_the_next()
-> anyhow::Result<()> {
    let mut env = Env::new("checks_blocking").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher_with(&[("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true")]).await?;
    let _worker = env.spawn_worker("noop")?;
    let db = env.db().await?;

    let (received, url) = opflow_integration::body_receiver().await?;
    env.opflow_ok(&["webhooks", "add", &url, "--events", "check.failed"]).await?;

    let plan = env.plan_file("checked", PLAN)?;
    let plan = plan.to_str().context("utf-8")?;
    let mut runs = Vec::new();
    for round in 1..=2 {
        let output = env.opflow(&["run", plan, "--wait", "--json"]).await?;
        let summary = parse_summary(&output).with_context(|| stderr(&output))?;
        assert_eq!(summary["status"], "failed", "round {round}: {summary}");
        let steps = steps(&db, &summary).await?;
        let status: Vec<(&str, &str)> =
            steps.iter().map(|(cell, status, _)| (cell.as_str(), status.as_str())).collect();
        assert_eq!(
            status,
            [
                ("up[a]", "succeeded"),
                ("up[b]", "failed"),
                ("up[c]", "succeeded"),
                ("down[a]", "succeeded"),
                ("down[b]", "skipped"),
                ("down[c]", "succeeded"),
                ("soft[a]", "succeeded"),
                ("soft[b]", "succeeded"),
                // A check that is not blocking fails nothing.
                ("soft[c]", "succeeded"),
            ],
            "round {round}"
        );
        let error = steps[1].2.as_deref().unwrap_or_default();
        assert!(error.contains("blocking check `rows` failed") && error.contains("partition b"), "{error}");
        runs.push(summary);
    }
    // The second run reused what passed and ran `up[b]` again, which failed again.
    let reused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM materializations WHERE run_id = $1::uuid AND reused_from IS NOT NULL",
    )
    .bind(runs[1]["run_id"].as_str().context("run_id")?)
    .fetch_one(&db)
    .await?;
    assert_eq!(reused, 7, "every cell but up[b] (and down[b], skipped) was reused");
    let failed_up_b: Option<i64> = sqlx::query_scalar(
        "SELECT materialization FROM catalog_cells WHERE asset = 'up' AND partition = 'b'",
    )
    .fetch_optional(&db)
    .await?
    .flatten();
    assert_eq!(failed_up_b, None, "what failed a blocking check is never a materialization");

    // The catalog keeps the newest result of each check of each cell.
    let output = env.opflow_ok(&["assets", "checks", "up", "--json"]).await?;
    let checks: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    assert_eq!(checks.len(), 3, "{checks:?}");
    assert_eq!(
        (&checks[0]["partition"], &checks[0]["passed"], &checks[0]["blocking"]),
        (&"b".into(), &false.into(), &true.into())
    );
    assert_eq!(checks[0]["run_id"], runs[1]["run_id"], "the newest result");
    let output = env.opflow_ok(&["assets", "checks", "soft", "--failed", "--json"]).await?;
    let failed: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (&failed[0]["partition"], &failed[0]["check"], &failed[0]["blocking"]),
        (&"c".into(), &"style".into(), &false.into())
    );

    // One `check.failed` per failed result: up[b] twice (once a run), soft[c] once (the
    // second run reused it, so nothing reported it again).
    let bodies = wait_for("three check.failed webhooks", Duration::from_secs(60), || async {
        let bodies = received.lock().unwrap().clone();
        Ok((bodies.len() >= 3).then_some(bodies))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.lock().unwrap().len(), 3, "no more than one delivery per failed result");
    let mut cells: Vec<(String, String, String, bool)> = bodies
        .iter()
        .map(|b| {
            let body: Value = serde_json::from_str(b).unwrap();
            assert_eq!(body["type"], "check.failed");
            let d = &body["data"];
            (
                d["asset"].as_str().unwrap_or_default().to_owned(),
                d["partition"].as_str().unwrap_or_default().to_owned(),
                d["check"].as_str().unwrap_or_default().to_owned(),
                d["blocking"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    cells.sort();
    assert_eq!(
        cells,
        [
            ("soft".into(), "c".into(), "style".into(), false),
            ("up".into(), "b".into(), "rows".into(), true),
            ("up".into(), "b".into(), "rows".into(), true),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn checks_must_be_declared_once_by_name() -> anyhow::Result<()> {
    let env = Env::new("checks_declared").await?;
    env.register("noop").await?;
    let plan = env.plan_file(
        "twice",
        "name: twice\nassets:\n  - name: a\n    op: noop@1.1.0\n    checks:\n      - {name: rows}\n      - {name: rows, blocking: true}\n",
    )?;
    let output = env.opflow(&["plan", "check", plan.to_str().context("utf-8")?]).await?;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("`rows` is declared twice"), "{}", stderr(&output));
    Ok(())
}
