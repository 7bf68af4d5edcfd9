//! Backfills: `opflow run --missing` and `--failed` run only the cells the catalog lacks
//! and what reads them, taking every other cell from the catalog; `--partitions` runs a
//! subset of a plan's partitions; `opflow plan check --missing` says beforehand what a
//! backfill would run. Counted from the run store: which cells a worker ran.

use std::collections::BTreeSet;

use anyhow::Context;
use opflow_integration::{Env, parse_summary, stderr};
use serde_json::Value;
use sqlx::PgPool;

async fn run_to_end(env: &Env, plan: &std::path::Path, extra: &[&str]) -> anyhow::Result<(Value, String)> {
    let mut args = vec!["run", plan.to_str().context("utf-8")?, "--wait", "--json"];
    args.extend_from_slice(extra);
    let output = env.opflow(&args).await?;
    let summary = parse_summary(&output).with_context(|| stderr(&output))?;
    assert_eq!(summary["status"], "succeeded", "{summary}\n{}", stderr(&output));
    Ok((summary, stderr(&output)))
}

/// The cells (`asset[partition]`) a worker ran in a run, and how many steps were taken from
/// the catalog.
async fn ran_and_taken(db: &PgPool, run: &Value) -> anyhow::Result<(BTreeSet<String>, i64)> {
    let run = run["run_id"].as_str().context("run_id")?;
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT m.asset, m.partition, m.reused_from IS NOT NULL FROM materializations m
         WHERE m.run_id = $1::uuid",
    )
    .bind(run)
    .fetch_all(db)
    .await?;
    let mut ran = BTreeSet::new();
    let mut taken = 0;
    for (asset, partition, reused) in rows {
        if reused {
            taken += 1;
        } else {
            ran.insert(cell(&asset, &partition));
        }
    }
    Ok((ran, taken))
}

fn cell(asset: &str, partition: &str) -> String {
    if partition.is_empty() { asset.to_owned() } else { format!("{asset}[{partition}]") }
}

/// `assets` assets, each reading the one before it partition by partition, over the days
/// of 2026 from January 1st.
fn daily_chain(assets: usize, days: u32) -> String {
    let end = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(u64::from(days) - 1);
    let mut plan = String::from("name: daily-chain\nassets:\n");
    for i in 0..assets {
        plan.push_str(&format!(
            "  - name: a{i:02}\n    op: noop@1.1.0\n    partitions: {{daily: {{start: 2026-01-01, end: {end}}}}}\n"
        ));
        if i > 0 {
            plan.push_str(&format!("    deps: [a{:02}]\n", i - 1));
        }
    }
    plan
}

#[tokio::test]
async fn missing_runs_exactly_the_removed_cells_and_what_reads_them() -> anyhow::Result<()> {
    const ASSETS: usize = 30;
    const DAYS: u32 = 365;
    let mut env = Env::new("backfill_missing").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = (env.spawn_worker("noop")?, env.spawn_worker("noop")?);
    let db = env.db().await?;
    let plan = env.plan_file("chain", &daily_chain(ASSETS, DAYS))?;

    let (first, _) = run_to_end(&env, &plan, &[]).await?;
    assert_eq!(ran_and_taken(&db, &first).await?.0.len(), ASSETS * DAYS as usize);

    // 120 cells leave the catalog, spread over assets and days (a fixed pseudo-random pick).
    let mut removed = BTreeSet::new();
    let mut x: u64 = 0x9e37_79b9;
    while removed.len() < 120 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        removed.insert(((x >> 33) as usize % ASSETS, (x >> 17) as u32 % DAYS));
    }
    let day = |d: u32| {
        (chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(d.into())).to_string()
    };
    let (assets, partitions): (Vec<String>, Vec<String>) =
        removed.iter().map(|(a, d)| (format!("a{a:02}"), day(*d))).unzip();
    let deleted = sqlx::query(
        "DELETE FROM catalog_cells c USING UNNEST($1::text[], $2::text[]) AS u(asset, partition)
         WHERE c.asset = u.asset AND c.partition = u.partition",
    )
    .bind(&assets)
    .bind(&partitions)
    .execute(&db)
    .await?;
    assert_eq!(deleted.rows_affected(), 120);
    // A removed cell runs, and so does every cell after it in its day's chain.
    let expected: BTreeSet<String> = removed
        .iter()
        .flat_map(|(a, d)| (*a..ASSETS).map(move |j| cell(&format!("a{j:02}"), &day(*d))))
        .collect();

    // What `plan check` says a backfill would run, without running it.
    let check =
        env.opflow_ok(&["plan", "check", plan.to_str().context("utf-8")?, "--missing", "--json"]).await?;
    let check: Value = serde_json::from_slice(&check.stdout)?;
    assert_eq!(check["runs"], expected.len(), "{check}");
    let said_missing: u64 = check["assets"]
        .as_array()
        .context("assets")?
        .iter()
        .filter_map(|a| a["runs"]["missing"]["cells"].as_u64())
        .sum();
    assert_eq!(said_missing, 120);

    let started = std::time::Instant::now();
    let (backfill, _) = run_to_end(&env, &plan, &["--missing"]).await?;
    let took = started.elapsed();
    let (ran, taken) = ran_and_taken(&db, &backfill).await?;
    assert_eq!(ran.len(), expected.len(), "the backfill ran {} cells, not {}", ran.len(), expected.len());
    assert_eq!(ran, expected, "exactly the removed cells and their downstream");
    assert_eq!(taken as usize, ASSETS * DAYS as usize - expected.len(), "every other cell from the catalog");
    assert_eq!(backfill["steps"]["reused"], taken, "{backfill}");
    eprintln!(
        "--missing over {} cells with 120 removed: ran {}, took {} from the catalog, in {:.2} s",
        ASSETS * DAYS as usize,
        ran.len(),
        taken,
        took.as_secs_f64()
    );

    // The catalog is whole again: another backfill runs nothing.
    let (again, _) = run_to_end(&env, &plan, &["--missing"]).await?;
    assert_eq!(ran_and_taken(&db, &again).await?.0.len(), 0);
    Ok(())
}

fn small_plan(mid_config: &str) -> String {
    format!(
        "name: backfill-small
assets:
  - name: up
    op: noop@1.1.0
    partitions: {{daily: {{start: 2026-01-01, end: 2026-01-10}}}}
  - name: mid
    op: noop@1.1.0
    deps: [up]
    partitions: {{daily: {{start: 2026-01-01, end: 2026-01-10}}}}
    config: {mid_config}
  - name: last
    op: noop@1.1.0
    deps: [mid]
    partitions: {{daily: {{start: 2026-01-01, end: 2026-01-10}}}}
  - name: total
    op: noop@1.1.0
    deps: [last]
"
    )
}

#[tokio::test]
async fn failed_missing_and_partitions_choose_their_cells() -> anyhow::Result<()> {
    let mut env = Env::new("backfill_kinds").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let db = env.db().await?;
    let plan = env.plan_file("small", &small_plan("{echo: 1}"))?;
    let (first, _) = run_to_end(&env, &plan, &[]).await?;
    assert_eq!(ran_and_taken(&db, &first).await?.0.len(), 31);

    // `up` of January 3rd failed (as the catalog records a final failure), and `mid`'s config
    // changes, which makes every `mid` cell stale.
    sqlx::query("UPDATE catalog_cells SET status = 'failed' WHERE asset = 'up' AND partition = '2026-01-03'")
        .execute(&db)
        .await?;
    let changed = env.plan_file("small", &small_plan("{echo: 2}"))?;
    // --failed takes stale cells as they are: only the failed cell and what reads it run.
    let (failed, _) = run_to_end(&env, &changed, &["--failed"]).await?;
    let (ran, taken) = ran_and_taken(&db, &failed).await?;
    let expected: BTreeSet<String> =
        ["up[2026-01-03]", "mid[2026-01-03]", "last[2026-01-03]", "total"].map(String::from).into();
    assert_eq!(ran, expected);
    assert_eq!(taken, 27);

    // --missing also runs the stale cells: the nine `mid` cells of the old config, what
    // reads them, and `total`. `plan check` says so first, with why.
    let check =
        env.opflow_ok(&["plan", "check", changed.to_str().context("utf-8")?, "--missing", "--json"]).await?;
    let check: Value = serde_json::from_slice(&check.stdout)?;
    assert_eq!(check["runs"], 19, "{check}");
    let mid =
        check["assets"].as_array().context("assets")?.iter().find(|a| a["asset"] == "mid").context("mid")?;
    assert_eq!(mid["runs"]["config_changed"]["cells"], 9, "{mid}");
    assert_eq!(mid["taken"], 1, "{mid}");
    let (missing, _) = run_to_end(&env, &changed, &["--missing"]).await?;
    let (ran, taken) = ran_and_taken(&db, &missing).await?;
    assert_eq!(ran.len(), 19, "{ran:?}");
    assert!(!ran.iter().any(|c| c.starts_with("up")) && !ran.contains("mid[2026-01-03]"), "{ran:?}");
    assert_eq!(taken, 12);

    // --partitions: the run's steps are exactly those days' cells; `total`, which reads
    // every day, is left out and said so.
    let (subset, said) =
        run_to_end(&env, &changed, &["--partitions", "2026-01-02..2026-01-04", "--no-reuse"]).await?;
    assert_eq!(subset["steps"]["total"], 9, "{subset}");
    let (ran, taken) = ran_and_taken(&db, &subset).await?;
    assert_eq!((ran.len(), taken), (9, 0));
    assert!(
        ran.iter().all(|c| ["02", "03", "04"].iter().any(|d| c.ends_with(&format!("2026-01-{d}]")))),
        "{ran:?}"
    );
    assert!(said.contains("left out `total`: it reads every partition of `last`"), "{said}");
    let (listed, _) = run_to_end(&env, &changed, &["--partitions", "2026-01-01,2026-01-10"]).await?;
    assert_eq!(listed["steps"]["total"], 6, "{listed}");

    // A selection that names nothing of the plan, or both --missing and --no-reuse, is refused.
    let refused = env
        .opflow(&["run", changed.to_str().context("utf-8")?, "--partitions", "2027-01-01..2027-02-01"])
        .await?;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("no partition of plan `backfill-small` is in `2027-01-01..2027-02-01`"),
        "{}",
        stderr(&refused)
    );
    let refused = env.opflow(&["run", changed.to_str().context("utf-8")?, "--missing", "--no-reuse"]).await?;
    assert!(!refused.status.success());
    Ok(())
}
