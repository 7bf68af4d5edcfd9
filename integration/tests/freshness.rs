//! Freshness: an asset's `freshness: {max_age}` makes each of its cells fresh, warn or
//! stale by the age of its data; a schedule `--on stale` recomputes only the stale cells
//! (and what reads them), a fresh one is taken from the catalog; each breach is announced
//! once as a `freshness.failed` webhook. A schedule `--on upstream-materialized` runs its
//! plan once per burst of materializations that other runs make of what it reads.

use std::{sync::Mutex, time::Duration};

use anyhow::Context;
use opflow_integration::{Env, wait_for};
use serde_json::Value;
use sqlx::PgPool;

const FRESH_PLAN: &str = "name: fresh
assets:
  - name: prices
    op: noop@1.1.0
    partitions: [a, b, c]
    freshness: {max_age: 1h}
  - name: report
    op: noop@1.1.0
    deps: [prices]
    partitions: [a, b, c]
";

/// Ages the data of `partition` of `prices` by `minutes`, as if it had been made then (its
/// materializations and its cell), and has the freshness watch look at the asset afresh:
/// outside a test a cell's data only grows older by waiting, which the watch follows.
async fn age(db: &PgPool, partition: &str, minutes: i32) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE materializations SET at = at - make_interval(mins => $2)
         WHERE asset = 'prices' AND partition = $1",
    )
    .bind(partition)
    .bind(minutes)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE catalog_cells SET materialized_at = materialized_at - make_interval(mins => $2)
         WHERE asset = 'prices' AND partition = $1",
    )
    .bind(partition)
    .bind(minutes)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE catalog_assets SET freshness_checked_until = NULL WHERE name = 'prices'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The `freshness.failed` bodies received so far.
fn breaches(received: &Mutex<Vec<String>>) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|body| serde_json::from_str::<Value>(body).ok())
        .filter(|body| body["type"] == "freshness.failed")
        .collect()
}

/// The runs a schedule submitted, oldest first: (id, status).
async fn runs_of(db: &PgPool, schedule: &str) -> anyhow::Result<Vec<(uuid::Uuid, String)>> {
    Ok(sqlx::query_as("SELECT id, status::text FROM runs WHERE schedule = $1 ORDER BY created_at")
        .bind(schedule)
        .fetch_all(db)
        .await?)
}

/// Each cell a run materialized, as `asset[partition]` and whether it ran (or was taken
/// from the catalog).
async fn cells_of_run(db: &PgPool, run: uuid::Uuid) -> anyhow::Result<Vec<(String, bool)>> {
    Ok(sqlx::query_as(
        "SELECT asset || '[' || partition || ']', reused_from IS NULL FROM materializations
         WHERE run_id = $1 ORDER BY asset DESC, partition",
    )
    .bind(run)
    .fetch_all(db)
    .await?)
}

async fn summary(env: &Env, asset: &str) -> anyhow::Result<Value> {
    let output = env.opflow_ok(&["assets", "list", "--json"]).await?;
    String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|a| a["name"] == asset)
        .with_context(|| format!("asset {asset} listed"))
}

#[tokio::test]
async fn a_stale_partition_is_recomputed_by_the_trigger_a_fresh_one_is_not_and_each_breach_is_announced_once()
-> anyhow::Result<()> {
    let mut env = Env::new("freshness_trigger").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher_with(&[("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true")]).await?;
    let _worker = env.spawn_worker("noop")?;
    let db = env.db().await?;
    let (received, url) = opflow_integration::body_receiver().await?;
    env.opflow_ok(&["webhooks", "add", &url, "--events", "freshness.failed"]).await?;

    let plan = env.plan_file("fresh", FRESH_PLAN)?;
    let plan = plan.to_str().context("utf-8")?;
    env.opflow_ok(&["run", plan, "--wait"]).await?;
    let fresh = summary(&env, "prices").await?;
    assert_eq!(fresh["freshness"]["fresh"], 3, "{fresh}");
    assert!(fresh["freshness"]["policy"].as_str().unwrap_or_default().contains("max_age 1h"), "{fresh}");
    assert_eq!(summary(&env, "report").await?.get("freshness"), None, "no policy, no freshness");

    // `a` made two hours ago is stale; `c`, 50 minutes ago, warns (past 45 minutes).
    age(&db, "a", 120).await?;
    age(&db, "c", 50).await?;
    let aged = summary(&env, "prices").await?;
    assert_eq!(
        (&aged["freshness"]["fresh"], &aged["freshness"]["warn"], &aged["freshness"]["stale"]),
        (&1.into(), &1.into(), &1.into()),
        "{aged}"
    );
    let listed = env.opflow_ok(&["assets", "list", "--freshness"]).await?;
    let text = String::from_utf8(listed.stdout)?;
    assert!(text.contains("1 fresh, 1 warn, 1 stale"), "{text}");
    let by_partition: Vec<(String, String)> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("prices "))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.len() >= 3 && ["fresh", "warn", "stale"].contains(&words[2]))
                .then(|| (words[1].to_owned(), words[2].to_owned()))
        })
        .collect();
    assert_eq!(
        by_partition,
        [("a".into(), "stale".into()), ("c".into(), "warn".into()), ("b".into(), "fresh".into())],
        "{text}"
    );
    // The web UI says the same.
    let (status, page) = opflow_integration::http_text(&env.api_addr, "GET", "/assets", None, None).await?;
    assert!(status == 200 && page.contains("1 fresh, 1 warn, 1 stale"), "{status}: {page}");
    let (status, page) =
        opflow_integration::http_text(&env.api_addr, "GET", "/assets/prices", None, None).await?;
    assert!(status == 200 && page.contains("max_age 1h, warn after 45m: 1 fresh, 1 warn, 1 stale"), "{page}");
    for state in ["fresh", "warn", "stale"] {
        assert!(page.contains(&format!("data-cell-freshness=\"{state}\"")), "{state}: {page}");
    }
    let stale = env.opflow_ok(&["assets", "show", "prices", "--freshness", "stale", "--json"]).await?;
    let stale: Value = serde_json::from_slice(&stale.stdout)?;
    let cells = stale["cells"].as_array().context("cells")?;
    assert_eq!(cells.len(), 1, "{stale}");
    assert_eq!((&cells[0]["partition"], &cells[0]["freshness"]), (&"a".into(), &"stale".into()));

    // The breach is announced once, however many times the watch looks (every 2 s).
    let first = wait_for("the freshness.failed webhook", Duration::from_secs(30), || async {
        Ok(breaches(&received).into_iter().next())
    })
    .await?;
    assert_eq!(
        (&first["data"]["asset"], &first["data"]["partition"], &first["data"]["owner"]),
        (&"prices".into(), &"a".into(), &"local".into()),
        "{first}"
    );
    assert!(first["data"]["policy"].as_str().unwrap_or_default().contains("max_age 1h"), "{first}");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(breaches(&received).len(), 1, "one webhook per breach: {:?}", breaches(&received));

    // The trigger runs the plan with `--missing`: the stale cell and what reads it run,
    // the fresh and the warning ones are taken from the catalog.
    env.opflow_ok(&["schedules", "add", "fresher", plan, "--on", "stale", "--debounce", "1s"]).await?;
    let run = wait_for("the trigger's run to end", Duration::from_secs(60), || async {
        let runs = runs_of(&db, "fresher").await?;
        Ok(runs.first().filter(|(_, status)| status == "succeeded").map(|(id, _)| *id))
    })
    .await?;
    let cells = cells_of_run(&db, run).await?;
    let cells: Vec<(&str, bool)> = cells.iter().map(|(cell, ran)| (cell.as_str(), *ran)).collect();
    assert_eq!(
        cells,
        [
            ("report[a]", true),
            ("report[b]", false),
            ("report[c]", false),
            ("prices[a]", true),
            ("prices[b]", false),
            ("prices[c]", false),
        ],
        "only the stale cell and what reads it ran"
    );
    let after = summary(&env, "prices").await?;
    assert_eq!(
        (&after["freshness"]["fresh"], &after["freshness"]["warn"], &after["freshness"]["stale"]),
        (&2.into(), &1.into(), &0.into()),
        "taken from the catalog, `c` is as old as its data: {after}"
    );
    // Nothing is stale: the trigger submits nothing more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(runs_of(&db, "fresher").await?.len(), 1);

    // A new breach (of the new materialization) is announced again, once.
    env.opflow_ok(&["schedules", "pause", "fresher"]).await?;
    age(&db, "a", 120).await?;
    wait_for("the second breach's webhook", Duration::from_secs(30), || async {
        Ok((breaches(&received).len() >= 2).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = breaches(&received);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1]["data"]["partition"], "a");
    assert_ne!(all[0]["data"]["run_id"], all[1]["data"]["run_id"], "each breach names the run that made it");
    env.opflow_ok(&["schedules", "remove", "fresher"]).await?;
    Ok(())
}

const UPSTREAM_PLAN: &str = "name: upstream
assets:
  - name: prices
    op: noop@1.1.0
    partitions: [a, b, c, d]
";

const DOWNSTREAM_PLAN: &str = "name: downstream
assets:
  - name: prices
    op: noop@1.1.0
    partitions: [a, b, c, d]
  - name: report
    op: noop@1.1.0
    deps: [prices]
    partitions: [a, b, c, d]
";

#[tokio::test]
async fn an_upstream_materialization_burst_makes_one_run_of_what_reads_it() -> anyhow::Result<()> {
    let mut env = Env::new("freshness_upstream").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let db = env.db().await?;
    let upstream = env.plan_file("upstream", UPSTREAM_PLAN)?;
    let upstream = upstream.to_str().context("utf-8")?;
    let downstream = env.plan_file("downstream", DOWNSTREAM_PLAN)?;
    let downstream = downstream.to_str().context("utf-8")?;
    // Materialized before the schedule: not new to it.
    env.opflow_ok(&["run", upstream, "--wait"]).await?;
    let added = env
        .opflow_ok(&[
            "schedules",
            "add",
            "on-prices",
            downstream,
            "--on",
            "upstream-materialized",
            "--debounce",
            "4s",
        ])
        .await?;
    let text = String::from_utf8(added.stdout)?;
    assert!(text.contains("on upstream_materialized (debounce 4s)"), "{text}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(runs_of(&db, "on-prices").await?.is_empty(), "nothing new upstream, no run");

    // A burst: two partitions materialized anew by two runs, one after the other.
    for partition in ["a", "b"] {
        env.opflow_ok(&["run", upstream, "--partitions", partition, "--no-reuse"]).await?;
    }
    let run = wait_for("the schedule's run to end", Duration::from_secs(60), || async {
        let runs = runs_of(&db, "on-prices").await?;
        Ok(runs.first().filter(|(_, status)| status == "succeeded").map(|(id, _)| *id))
    })
    .await?;
    // Past another debounce: still the one run.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(runs_of(&db, "on-prices").await?.len(), 1, "one run for the burst");
    let cells = cells_of_run(&db, run).await?;
    let ran: Vec<&str> = cells.iter().filter(|(_, ran)| *ran).map(|(cell, _)| cell.as_str()).collect();
    assert_eq!(ran, ["report[a]", "report[b]", "report[c]", "report[d]"], "{cells:?}");
    assert!(
        cells.iter().filter(|(cell, _)| cell.starts_with("prices")).all(|(_, ran)| !ran),
        "what the other runs materialized is taken from the catalog: {cells:?}"
    );

    // The schedule's own run made materializations too: they are not news to it. Another
    // upstream run is.
    env.opflow_ok(&["run", upstream, "--partitions", "c", "--no-reuse", "--wait"]).await?;
    wait_for("a second run", Duration::from_secs(60), || async {
        Ok((runs_of(&db, "on-prices").await?.len() == 2).then_some(()))
    })
    .await?;
    env.opflow_ok(&["schedules", "remove", "on-prices"]).await?;
    Ok(())
}
