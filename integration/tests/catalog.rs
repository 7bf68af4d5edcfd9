//! The asset catalog across runs: every successful step records a materialization of its
//! cell (asset × partition × sweep point) with what it read; a final failure marks its cell
//! failed; a cell whose input is replaced by a different output turns stale; lineage
//! crosses runs. Checked through `opflow assets` (the CLI over the API) against a real
//! dispatcher, broker and database.

use anyhow::Context;
use opflow_integration::{Env, parse_summary};
use serde_json::Value;

/// `prices` (2 partitions × 2 sweep points) → `report` (per partition); `broken` fails.
const PLAN: &str = "name: catalog
assets:
  - name: prices
    op: noop@1.1.0
    partitions: [aave, compound]
    sweep: {vol: [0.2, 0.4]}
    config: {echo: {v: 1}, materialize: {rows: 10}}
  - name: report
    op: noop@1.1.0
    deps: [prices]
    partitions: [aave, compound]
  - name: broken
    op: noop@1.1.0
    config: {fail: fatal}
";

/// The same `prices`, computed again with another output, alone.
const PRICES_AGAIN: &str = "name: catalog-prices
assets:
  - name: prices
    op: noop@1.1.0
    partitions: [aave, compound]
    sweep: {vol: [0.2, 0.4]}
    config: {echo: {v: 2}}
";

async fn run_to_end(env: &Env, name: &str, yaml: &str) -> anyhow::Result<Value> {
    let plan = env.plan_file(name, yaml)?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    parse_summary(&output)
}

async fn assets(env: &Env) -> anyhow::Result<Vec<Value>> {
    let output = env.opflow_ok(&["assets", "list", "--json"]).await?;
    String::from_utf8(output.stdout)?.lines().map(|line| Ok(serde_json::from_str(line)?)).collect()
}

fn counts(assets: &[Value], name: &str) -> (i64, i64, i64, i64, i64) {
    let a =
        assets.iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("no asset {name}: {assets:?}"));
    let n = |k: &str| a[k].as_i64().unwrap_or(-1);
    (n("cells"), n("materialized"), n("stale"), n("failed"), n("missing"))
}

async fn json(env: &Env, args: &[&str]) -> anyhow::Result<Value> {
    let output = env.opflow_ok(args).await?;
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test]
async fn runs_fill_the_catalog_and_a_replaced_input_makes_its_readers_stale() -> anyhow::Result<()> {
    let env = Env::new("catalog").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;

    let first = run_to_end(&env, "catalog", PLAN).await?;
    assert_eq!(first["status"], "failed", "broken fails the run: {first}");
    let first_run = first["run_id"].as_str().context("run_id")?.to_owned();

    let listed = assets(&env).await?;
    // (cells, materialized, stale, failed, missing)
    assert_eq!(counts(&listed, "prices"), (4, 4, 0, 0, 0));
    assert_eq!(counts(&listed, "report"), (2, 2, 0, 0, 0));
    assert_eq!(counts(&listed, "broken"), (1, 0, 0, 1, 0));

    // A cell's materialization says what computed it, what it read and what it reported.
    let history =
        json(&env, &["assets", "show", "report", "--partition", "aave", "--history", "--json"]).await?;
    let history = history.as_array().context("a list")?;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["run_id"], first_run.as_str());
    assert_eq!(history[0]["op"], "noop@1.1.0");
    assert_eq!(history[0]["inputs"].as_array().map(Vec::len), Some(2), "report[aave] read both vol points");
    let prices =
        json(&env, &["assets", "show", "prices", "--partition", "aave", "--history", "--json"]).await?;
    assert_eq!(prices[0]["metadata"], serde_json::json!([{"rows": 10}]), "{prices}");
    assert_eq!(prices[0]["output_digest"].as_str().map(str::len), Some(64));

    // The failed cell says why.
    let broken = json(&env, &["assets", "show", "broken", "--json"]).await?;
    assert_eq!(broken["cells"][0]["status"], "failed", "{broken}");
    assert!(broken["cells"][0]["error"].as_str().unwrap_or_default().contains("fail: fatal"), "{broken}");

    // Lineage: report[aave] read prices[aave] at both points, and they were read by it.
    let upstream = json(&env, &["assets", "lineage", "report", "--partition", "aave", "--json"]).await?;
    let items = upstream["items"].as_array().context("items")?;
    assert_eq!(items.len(), 2, "{upstream}");
    assert!(items.iter().all(|i| i["depth"] == 1
        && i["materialization"]["asset"] == "prices"
        && i["materialization"]["partition"] == "aave"));
    let downstream =
        json(&env, &["assets", "lineage", "prices", "--partition", "compound", "--downstream", "--json"])
            .await?;
    let items = downstream["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1, "{downstream}");
    assert_eq!(items[0]["materialization"]["asset"], "report");
    assert_eq!(items[0]["materialization"]["partition"], "compound");

    // Another plan computes `prices` again with a different output: `report`, which read the
    // old ones, is stale; `prices` is current under its new definition.
    let second = run_to_end(&env, "catalog-prices", PRICES_AGAIN).await?;
    assert_eq!(second["status"], "succeeded", "{second}");
    let listed = assets(&env).await?;
    assert_eq!(counts(&listed, "prices"), (4, 4, 0, 0, 0));
    assert_eq!(counts(&listed, "report"), (2, 0, 2, 0, 0));
    let history =
        json(&env, &["assets", "show", "prices", "--partition", "aave", "--history", "--json"]).await?;
    assert_eq!(history.as_array().map(Vec::len), Some(4), "two points, two runs: {history}");
    // Lineage still crosses runs: report[aave] read the first run's prices.
    let upstream = json(&env, &["assets", "lineage", "report", "--partition", "aave", "--json"]).await?;
    assert!(
        upstream["items"]
            .as_array()
            .context("items")?
            .iter()
            .all(|i| i["materialization"]["run_id"] == first_run.as_str())
    );
    let stale = json(&env, &["assets", "show", "report", "--status", "stale", "--json"]).await?;
    assert_eq!(stale["cells"].as_array().map(Vec::len), Some(2), "{stale}");

    // The first plan again: everything current again, and the failed cell still failed.
    let third = run_to_end(&env, "catalog", PLAN).await?;
    assert_eq!(third["status"], "failed");
    let listed = assets(&env).await?;
    assert_eq!(counts(&listed, "prices"), (4, 4, 0, 0, 0));
    assert_eq!(counts(&listed, "report"), (2, 2, 0, 0, 0));
    assert_eq!(counts(&listed, "broken"), (1, 0, 0, 1, 0));

    // An unknown asset is the user's mistake, said as such.
    let output = env.opflow(&["assets", "show", "nope"]).await?;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no run declared asset `nope`"), "{output:?}");
    Ok(())
}
